; vga.asm - drawing primitives for VGA mode 12h (640x480, 4 bit planes).
;
; Under QEMU every access to the planar A000 window is emulated: each read
; and each port write is an exit to QEMU, while writes (coalesced MMIO) and
; especially REP STOSB/MOVSB runs are cheap. Some hosts also emulate real
; mode instruction by instruction. So fills write 8 pixels per byte through
; Set/Reset with REP STOSB, reads happen only where a partial byte must keep
; its other pixels (the read loads the latches), and text that is redrawn
; often (draw_opaque) is composed in RAM and sent line by line.
;
; VGA state kept between calls: write mode 0, no rotate/function, Set/Reset
; enabled on all planes, Bit Mask FF, Map Mask 0F, read plane 0.

VGA_SEG     equ 0xA000
GC_PORT     equ 0x3CE
SEQ_PORT    equ 0x3C4
LINE_BYTES         equ 80                  ; bytes per scan line
SCR_W       equ 640
SCR_H       equ 480
CURSOR_SAVE equ 0xA000              ; offscreen (past 38400) copy of the pixels under the pointer
LATCH_BYTE  equ 0xA040              ; offscreen byte used to load the latches with a colour
CUR_ROWS    equ 20

C_BLACK     equ 0
C_BLUE      equ 1
C_CYAN      equ 3
C_LGRAY     equ 7
C_DGRAY     equ 8
C_LBLUE     equ 9
C_WHITE     equ 15

%macro GCSET 2
    mov dx, GC_PORT
    mov ax, ((%2) << 8) | (%1)
    out dx, ax
%endmacro

vga_default_state:
    push ax
    push dx
    GCSET 5, 0x00
    GCSET 3, 0x00
    GCSET 1, 0x0F
    GCSET 8, 0xFF
    GCSET 4, 0x00
    GCSET 7, 0x00                      ; read mode 1 then always reads FF (see cursor_show)
    mov dx, SEQ_PORT
    mov ax, 0x0F02
    out dx, ax
    pop dx
    pop ax
    ret

; fill_rect: AX = x, BX = y, CX = width, DX = height, SI = colour.
; Preserves all registers. Edge columns with partial bytes are done with one
; bit mask each for the whole height, so a fill costs at most 3 mask changes.
fill_rect:
    call cursor_hide
    pusha
    push es
    test cx, cx
    jle .out
    test dx, dx
    jle .out
    mov [fr_h], dx
    mov di, ax                         ; DI = x
    add cx, ax
    dec cx                             ; CX = last column
    mov dx, GC_PORT
    push ax
    mov ax, si
    mov ah, al
    mov al, 0                          ; Set/Reset colour
    out dx, ax
    pop ax
    push cx
    mov cl, al
    and cl, 7
    mov al, 0xFF
    shr al, cl
    mov [fr_lmask], al
    pop cx
    push cx
    and cl, 7
    xor cl, 7
    mov al, 0xFF
    shl al, cl
    mov [fr_rmask], al
    pop cx
    shr di, 3                          ; first byte column
    shr cx, 3                          ; last byte column
    imul bx, bx, LINE_BYTES                   ; BX = offset of the first line
    mov ax, VGA_SEG
    mov es, ax
    cmp di, cx
    jne .multi
    mov ah, [fr_lmask]
    and ah, [fr_rmask]
    mov si, di
    call .column
    jmp .restore
.multi:
    mov [fr_rb], cx
    cmp byte [fr_lmask], 0xFF
    je .left_full
    mov ah, [fr_lmask]
    mov si, di
    call .column
    inc di
.left_full:
    mov cx, [fr_rb]
    cmp byte [fr_rmask], 0xFF
    je .right_full
    mov ah, [fr_rmask]
    mov si, cx
    call .column
    dec cx
.right_full:
    sub cx, di                         ; full-byte columns DI..CX
    inc cx
    jle .restore
    mov dx, GC_PORT
    mov ax, 0xFF08
    out dx, ax
    add di, bx
    mov dx, [fr_h]
    mov ax, cx
.mrow:
    mov cx, ax
    push di
    rep stosb                          ; data is ignored: Set/Reset gives the colour
    pop di
    add di, LINE_BYTES
    dec dx
    jnz .mrow
.restore:
    mov dx, GC_PORT
    mov ax, 0xFF08
    out dx, ax
.out:
    pop es
    popa
    ret

; AH = bit mask, SI = byte column, BX = first line offset, [fr_h] lines.
.column:
    push cx
    push si
    push dx
    mov dx, GC_PORT
    mov al, 8
    out dx, ax
    add si, bx
    mov cx, [fr_h]
.crow:
    or [es:si], al                     ; read loads the latches, write merges
    add si, LINE_BYTES
    loop .crow
    pop dx
    pop si
    pop cx
    ret

; draw_text: transparent text. AX = x, BX = y (any pixel), SI = NUL-terminated
; string, CL = colour. Preserves all registers.
draw_text:
    call cursor_hide
    pusha
    push es
    push fs
    mov dx, GC_PORT
    push ax
    mov ah, cl
    mov al, 0
    out dx, ax
    pop ax
    imul bx, bx, LINE_BYTES
    mov [dt_row], bx
    mov [dt_x], ax
    mov ax, VGA_SEG
    mov es, ax
    mov fs, [font_seg]
.next:
    lodsb
    test al, al
    jz .done
    push si
    mov ah, 0
    shl ax, 4
    add ax, [font_off]
    mov si, ax
    mov ax, [dt_x]
    mov cx, ax
    and cl, 7
    shr ax, 3
    mov di, [dt_row]
    add di, ax
    call blit_glyph
    add word [dt_x], 8
    pop si
    jmp .next
.done:
    mov ax, 0xFF08
    out dx, ax
    pop fs
    pop es
    popa
    ret

; draw_glyph: one 8x16 glyph from segment 0. AX = x, BX = y, CL = colour,
; SI = glyph. Preserves all registers.
draw_glyph:
    call cursor_hide
    pusha
    push es
    push fs
    mov dx, GC_PORT
    push ax
    mov ah, cl
    mov al, 0
    out dx, ax
    pop ax
    imul bx, bx, LINE_BYTES
    mov di, ax
    shr di, 3
    add di, bx
    mov cx, ax
    and cl, 7
    push word 0
    pop fs
    push word VGA_SEG
    pop es
    call blit_glyph
    mov ax, 0xFF08
    out dx, ax
    pop fs
    pop es
    popa
    ret

; blit_glyph: FS:SI = 16 glyph rows, ES:DI = byte of the top row, CL = x & 7,
; DX = GC_PORT, colour already in Set/Reset. Pixels outside the glyph's
; bits keep their colour (the bit mask protects them).
blit_glyph:
    push ax
    push bx
    push si
    push di
    push bp
    mov bp, 16
.row:
    mov bh, [fs:si]
    inc si
    test bh, bh
    jz .skip
    xor bl, bl
    shr bx, cl                         ; BH = left byte mask, BL = right byte mask
    test bh, bh
    jz .second
    mov ah, bh
    mov al, 8
    out dx, ax
    or [es:di], al
.second:
    test bl, bl
    jz .skip
    mov ah, bl
    mov al, 8
    out dx, ax
    or [es:di+1], al
.skip:
    add di, LINE_BYTES
    dec bp
    jnz .row
    pop bp
    pop di
    pop si
    pop bx
    pop ax
    ret

; draw_opaque: text with a background colour on byte-aligned cells, for
; text that changes often (Notepad, clocks, status). The text's 16 scan
; lines are composed in RAM, then each is sent with one REP MOVSB in write
; mode 3: Set/Reset gives the text colour where a data bit is 1, and the
; latches, loaded once from a background-coloured byte, give the background
; elsewhere. So there are no per-byte reads and few instructions per byte.
; DI = offset of the first cell's top line, SI = characters, CX = count,
; [op_fg], [op_bg] colours, [op_scale] = 1..3 (cell of 8s x 16s pixels).
; Character CARET (1) is drawn as the Notepad caret. Preserves all registers.
draw_opaque:
    test cx, cx
    jnz .go
    ret
.go:
    pusha
    push es
    mov [op_base], di
    movzx ax, byte [op_scale]
    mul cx
    mov [op_width], ax                 ; bytes per scan line
    push cx
    mov cx, ax
    movzx dx, byte [op_scale]
    shl dx, 4
    call cursor_hide_if                ; the clocks redraw every second
    pop cx
    mov dx, [op_width]
    push word 0
    pop es
    ; Compose: text_buf holds 16 lines of [op_width] bytes; each character
    ; fills one column (scale bytes wide) from top to bottom.
    mov bx, si
    mov di, text_buf
.char:
    mov al, [bx]
    inc bx
    mov si, caret_glyph
    cmp al, CARET
    je .glyph
    movzx si, al
    shl si, 4
    add si, [font_off]
.glyph:
    push di
    push cx
    mov cx, 16
    cmp byte [op_scale], 1
    jne .wide
    dec dx                             ; next line: width - 1 further on
.line1:
    movsb
    add di, dx
    loop .line1
    inc dx
    pop cx
    pop di
    inc di
    loop .char
    jmp .output
.wide:
    lodsb
    call expand
    push si
    push cx
    mov si, exp_buf
    movzx cx, byte [op_scale]
    push di
    rep movsb
    pop di
    add di, dx
    pop cx
    pop si
    loop .wide
    pop cx
    pop di
    movzx ax, byte [op_scale]
    add di, ax
    loop .char
.output:
    push word VGA_SEG
    pop es
    mov dx, GC_PORT
    mov ah, [op_bg]
    mov al, 0
    out dx, ax
    mov [es:LATCH_BYTE], al            ; write mode 0: 8 background pixels
    mov al, [es:LATCH_BYTE]            ; latches := background
    mov ah, [op_fg]
    mov al, 0
    out dx, ax
    mov ax, 0x0305                     ; write mode 3
    out dx, ax
    mov si, text_buf
    mov di, [op_base]
    mov bx, 16
.out_line:
    movzx dx, byte [op_scale]
.out_rep:
    push si
    push di
    mov cx, [op_width]
    rep movsb
    pop di
    pop si
    add di, LINE_BYTES
    dec dx
    jnz .out_rep
    add si, [op_width]
    dec bx
    jnz .out_line
    mov dx, GC_PORT
    mov ax, 0x0005                     ; back to write mode 0
    out dx, ax
    pop es
    popa
    ret

caret_glyph:
    times 16 db 0xC0                   ; two pixels wide, full cell height

; expand: AL = glyph row -> exp_buf[0..scale-1], each pixel repeated scale
; times, leftmost pixel in the most significant bit of exp_buf[0]. Table
; lookups per nibble: a bit loop costs too many (possibly emulated)
; instructions for a clock that redraws every second.
expand:
    cmp byte [op_scale], 2
    jae .wide
    mov [exp_buf], al
    ret
.wide:
    push ax
    push bx
    push dx
    movzx bx, al
    shr bx, 4                          ; BX = left nibble
    and ax, 0x000F                     ; AX = right nibble
    cmp byte [op_scale], 2
    jne .scale3
    mov dl, [nibble_x2+bx]
    mov bx, ax
    mov dh, [nibble_x2+bx]
    mov [exp_buf], dx                  ; DL first: the left nibble
    jmp .done
.scale3:
    add bx, bx
    mov dx, [nibble_x3+bx]             ; 12 bits for the left nibble
    mov bx, ax
    add bx, bx
    mov ax, [nibble_x3+bx]             ; 12 bits for the right nibble
    mov [exp_buf+2], al
    mov bl, dl
    shl bl, 4
    or bl, ah
    mov [exp_buf+1], bl
    shr dx, 4
    mov [exp_buf], dl
.done:
    pop dx
    pop bx
    pop ax
    ret

; nibble_x2[n]: the 4 bits of n, each doubled (8 bits).
; nibble_x3[n]: the 4 bits of n, each tripled (12 bits).
nibble_x2:
%assign n 0
%rep 16
  %assign v 0
  %assign b 3
  %rep 4
    %assign v (v << 2) | (((n >> b) & 1) * 3)
    %assign b b - 1
  %endrep
    db v
  %assign n n + 1
%endrep
nibble_x3:
%assign n 0
%rep 16
  %assign v 0
  %assign b 3
  %rep 4
    %assign v (v << 3) | (((n >> b) & 1) * 7)
    %assign b b - 1
  %endrep
    dw v
  %assign n n + 1
%endrep

; ---------------------------------------------------------------------------
; Mouse pointer. The pixels under it are copied to offscreen video memory
; through the latches (write mode 1): one read and one write per byte, all
; four planes at once. Everything that draws calls cursor_hide first; the
; main loop shows the pointer again once per pass.
; ---------------------------------------------------------------------------

cursor_hide:
    cmp byte [cur_shown], 0
    jne .restore
    ret
.restore:
    pusha
    push ds
    push es
    mov byte [cur_shown], 0
    GCSET 5, 0x01                      ; write mode 1: each MOVSB copies 8 pixels
    push word VGA_SEG
    pop es
    push es
    pop ds
    mov di, [cs:cur_saved_off]
    mov si, CURSOR_SAVE
    mov dx, [cs:cur_saved_rows]
.row:
    mov cx, 3
    rep movsb
    add di, LINE_BYTES - 3
    dec dx
    jnz .row
    GCSET 5, 0x00
    pop es
    pop ds
    popa
    ret

; cursor_hide_if: hide the pointer only if it overlaps the area whose top
; left byte is at offset DI, CX bytes wide and DX lines high. Preserves all.
cursor_hide_if:
    cmp byte [cur_shown], 0
    jne .check
    ret
.check:
    pusha
    mov bp, dx
    mov bx, LINE_BYTES
    mov ax, di
    xor dx, dx
    div bx
    mov di, ax                         ; DI = area's first line
    mov si, dx                         ; SI = area's first byte column
    mov ax, [cur_saved_off]
    xor dx, dx
    div bx                             ; AX = pointer's line, DX = byte column
    cmp dx, LINE_BYTES - 2
    jae .hide                          ; its bytes wrap to the next line
    mov bx, ax
    add bx, [cur_saved_rows]
    cmp di, bx
    jae .out
    mov bx, di
    add bx, bp
    cmp ax, bx
    jae .out
    mov bx, dx
    add bx, 3
    cmp si, bx
    jae .out
    mov bx, si
    add bx, cx
    cmp dx, bx
    jae .out
.hide:
    call cursor_hide
.out:
    popa
    ret

cursor_show:
    cmp byte [cur_shown], 0
    jne .ret
    cmp byte [mouse_mode], 0
    jne .draw
.ret:
    ret
.draw:
    pusha
    push es
    mov byte [cur_shown], 1
    push word VGA_SEG
    pop es
    mov ax, [mouse_y]
    mov cx, SCR_H
    sub cx, ax                         ; clip at the bottom edge
    cmp cx, CUR_ROWS
    jbe .rows_ok
    mov cx, CUR_ROWS
.rows_ok:
    mov [cur_saved_rows], cx
    imul di, ax, LINE_BYTES
    mov ax, [mouse_x]
    shr ax, 3
    add di, ax
    mov [cur_saved_off], di
    ; Bytes past the right edge are the next line's first bytes: saving and
    ; restoring them unchanged is harmless, and they are never drawn on.
    push di
    push cx
    GCSET 5, 0x01                      ; write mode 1: each MOVSB copies 8 pixels
    push ds
    push es
    pop ds
    mov si, di
    mov di, CURSOR_SAVE
    mov dx, cx
.save:
    mov cx, 3
    rep movsb
    add si, LINE_BYTES - 3
    dec dx
    jnz .save
    pop ds
    GCSET 5, 0x00
    pop cx
    pop di
    ; Write mode 3 + read mode 1 (Colour Don't Care 0, so reads give FF):
    ; AND [mem], mask loads the latches and writes the mask in one access.
    GCSET 5, 0x0B
    mov bx, cursor_outline
    mov ah, C_BLACK
    call .pass
    mov bx, cursor_inside
    mov ah, C_WHITE
    call .pass
    GCSET 5, 0x00
    pop es
    popa
    ret

%macro CURBYTE 1
    mov al, [cur_m+%1]
    test al, al
    jz %%skip
    cmp si, LINE_BYTES-%1              ; clip at the right edge
    jae %%skip
    and [es:di+%1], al
%%skip:
%endmacro

; BX = row masks, AH = colour, DI = top byte, CX = rows.
.pass:
    push cx
    push di
    push bx
    mov dx, GC_PORT
    mov al, 0
    out dx, ax
    mov si, [mouse_x]
    shr si, 3
.prow:
    push cx
    mov cl, [mouse_x]
    and cl, 7
    movzx eax, word [bx]
    shl eax, 16
    shr eax, cl
    bswap eax
    mov [cur_m], eax
    CURBYTE 0
    CURBYTE 1
    CURBYTE 2
    add di, LINE_BYTES
    add bx, 2
    pop cx
    loop .prow
    pop bx
    pop di
    pop cx
    ret

; Arrow, hotspot top left; most significant bit = leftmost pixel.
cursor_outline:
    dw 1000000000000000b
    dw 1100000000000000b
    dw 1110000000000000b
    dw 1111000000000000b
    dw 1111100000000000b
    dw 1111110000000000b
    dw 1111111000000000b
    dw 1111111100000000b
    dw 1111111110000000b
    dw 1111111111000000b
    dw 1111111111100000b
    dw 1111111111110000b
    dw 1111111100000000b
    dw 1111011110000000b
    dw 1110011110000000b
    dw 1100001111000000b
    dw 1000001111000000b
    dw 0000000111100000b
    dw 0000000111100000b
    dw 0000000011000000b
cursor_inside:
    dw 0000000000000000b
    dw 0000000000000000b
    dw 0100000000000000b
    dw 0110000000000000b
    dw 0111000000000000b
    dw 0111100000000000b
    dw 0111110000000000b
    dw 0111111000000000b
    dw 0111111100000000b
    dw 0111111110000000b
    dw 0111111111000000b
    dw 0111111000000000b
    dw 0111011000000000b
    dw 0110001100000000b
    dw 0100001100000000b
    dw 0000000110000000b
    dw 0000000110000000b
    dw 0000000011000000b
    dw 0000000011000000b
    dw 0000000000000000b
