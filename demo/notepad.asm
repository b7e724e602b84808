; notepad.asm - the Notepad window: text buffer, word-wrapped layout, the
; document area on disk.
;
; The text lives in doc_buf exactly as it is stored on disk (see the layout
; at the top of demo.asm). Editing only happens at the end (type, Backspace,
; Enter). The screen is described by np_shadow, the characters currently
; shown in each text cell; a render lays the whole text out again and only
; redraws the cells that differ, so a keystroke costs a few VGA writes.

NP_COLS     equ 50                     ; text cells per row
NP_WRAP     equ NP_COLS - 1            ; characters per row (the caret needs a cell)
NP_ROWS     equ 11
NP_TXB      equ 3                      ; first cell: byte column 3 = x 24
NP_TY       equ 262                    ; first row's top line
NP_STATUS_XB equ 13                    ; status text: x 104
NP_STATUS_Y  equ 445
STATUS_TICKS equ 55                    ; "Saved" stays about 3 s
CARET       equ 1                      ; cell code drawn as the caret

np_draw:
    WRECT   5, 222, -10,   1, C_LGRAY
    mov ax, [wx]
    add ax, 13
    mov bx, [wy]
    add bx, 226
    mov cx, 64
    mov dx, 22
    mov si, str_save
    call draw_button
    mov di, np_shadow
    mov cx, NP_ROWS * NP_COLS
    mov al, 0xFF                       ; matches no character: redraw every cell
    rep stosb
    call np_render
    mov di, sh_np_status
    mov cx, 16
    mov al, 0xFF
    rep stosb
    call np_status_show
    ret

np_click:
    HIT 13, 226, 64, 22, doc_save
    ret

notepad_open:
    push bx
    mov bx, win_notepad
    call open_window
    pop bx
    ret

; np_insert: AL = character (printable or LF).
np_insert:
    pusha
    mov bx, [doc_len]
    cmp bx, DOC_MAX
    jae .full
    mov [doc_buf+bx], al
    inc bx
    mov [doc_len], bx
    mov byte [doc_buf+bx], 0
    call np_render
.full:
    popa
    ret

np_backspace:
    pusha
    mov bx, [doc_len]
    test bx, bx
    jz .empty
    dec bx
    mov [doc_len], bx
    mov byte [doc_buf+bx], 0
    call np_render
.empty:
    popa
    ret

; layout_line: lay out one screen row starting at text index SI.
; Returns DI = end of the row's characters, BX = start of the next row, and
; CF set if this row is the last one (it ends at the end of the text and
; holds the caret). Rows break at LF, else at the last space that fits
; (the space is dropped), else after NP_WRAP characters. String
; instructions do the scanning: they are cheap even where the host emulates
; real mode instruction by instruction. Needs ES = 0.
layout_line:
    push ax
    push cx
    mov cx, [doc_len]
    sub cx, si                         ; characters left
    jz .last_at_si
    mov bx, cx
    cmp cx, NP_WRAP + 1
    jbe .limit_ok
    mov cx, NP_WRAP + 1                ; an LF right after a full row still ends it
.limit_ok:
    lea di, [doc_buf+si]
    mov al, 0x0A
    repne scasb
    jne .no_lf
    dec di                             ; DI -> the LF
    sub di, doc_buf
    lea bx, [di+1]
    clc
    jmp .ret
.no_lf:
    cmp bx, NP_WRAP
    ja .wrap
    mov di, [doc_len]                  ; the rest fits: last row
    mov bx, di
    stc
    jmp .ret
.wrap:
    ; The character at SI+NP_WRAP does not fit: break at the last space in
    ; SI+1 .. SI+NP_WRAP, searching backwards.
    lea di, [doc_buf+si+NP_WRAP]
    mov cx, NP_WRAP
    mov al, ' '
    std
    repne scasb
    cld
    jne .hard
    inc di                             ; DI -> the space
    sub di, doc_buf
    lea bx, [di+1]
    clc
    jmp .ret
.hard:
    lea di, [si+NP_WRAP]               ; one long word: break inside it
    mov bx, di
    clc
    jmp .ret
.last_at_si:
    mov di, si
    mov bx, si
    stc
.ret:
    pop cx
    pop ax
    ret

; np_render: bring the text area up to date (only if Notepad is open). Shows
; the last NP_ROWS rows, so the caret always stays visible.
np_render:
    test byte [win_notepad+win.flags], WF_OPEN
    jnz .go
    ret
.go:
    pusha
    xor si, si
    xor cx, cx
.count:
    call layout_line
    jc .counted
    inc cx
    mov si, bx
    jmp .count
.counted:
    mov ax, cx
    sub ax, NP_ROWS - 1
    jge .first_ok
    xor ax, ax
.first_ok:
    mov [np_first], ax
    xor si, si
    xor cx, cx                         ; row number in the whole text
.row:
    call layout_line
    pushf
    cmp cx, [np_first]
    jb .next
    call np_compose
    popf
    pushf
    jnc .no_caret
    mov ax, di
    sub ax, si
    push bx
    mov bx, ax
    mov byte [np_row+bx], CARET
    pop bx
.no_caret:
    mov ax, cx
    sub ax, [np_first]
    call np_flush_row
.next:
    popf
    jc .blank_rest
    inc cx
    mov si, bx
    jmp .row
.blank_rest:
    mov ax, cx
    sub ax, [np_first]
.blank:
    inc ax
    cmp ax, NP_ROWS
    jae .done
    xor si, si
    xor di, di
    call np_compose                    ; empty range: all spaces
    call np_flush_row
    jmp .blank
.done:
    popa
    ret

; np_compose: np_row := text[SI..DI) padded with spaces.
np_compose:
    pusha
    push di
    push si
    mov di, np_row
    mov cx, NP_COLS
    mov al, ' '
    rep stosb
    pop si
    pop cx
    sub cx, si
    mov di, np_row
    add si, doc_buf
    rep movsb
    popa
    ret

; np_flush_row: AX = visible row; redraw the cells of np_row that differ.
np_flush_row:
    pusha
    push ax
    mov bx, NP_COLS
    mul bx
    mov di, np_shadow
    add di, ax
    mov si, np_row
    pop ax
    shl ax, 4
    add ax, NP_TY
    imul bx, ax, LINE_BYTES
    add bx, NP_TXB
    mov cx, NP_COLS
    mov byte [op_fg], C_BLACK
    mov byte [op_bg], C_WHITE
    mov byte [op_scale], 1
    call update_field
    popa
    ret

; update_field: redraw only the changed span of a text field.
; SI = new text, DI = shadow (what the screen shows, updated), CX = length
; (> 0), BX = screen offset of the first cell; [op_fg], [op_bg],
; [op_scale] set. Needs ES = 0.
update_field:
    pusha
    mov [uf_new], si
    mov [uf_off], bx
    mov [uf_len], cx
    mov bx, di                         ; BX = shadow
    repe cmpsb
    je .none
    mov ax, si
    dec ax
    sub ax, [uf_new]                   ; AX = first changed cell
    mov si, [uf_new]
    add si, [uf_len]
    dec si
    mov di, bx
    add di, [uf_len]
    dec di
    mov cx, [uf_len]
    std
    repe cmpsb                         ; from the end: last changed cell
    cld
    inc si
    sub si, [uf_new]                   ; SI = last changed cell
    mov cx, si
    sub cx, ax
    inc cx                             ; cells to redraw
    mov si, [uf_new]
    add si, ax
    lea di, [bx]
    add di, ax
    push si
    push cx
    rep movsb                          ; the shadow now matches
    pop cx
    pop si
    movzx bx, byte [op_scale]
    mul bx
    add ax, [uf_off]
    mov di, ax
    call draw_opaque
.none:
    popa
    ret

; --- status line next to the Save button ------------------------------------

; np_set_status: SI = 16-character message, AL = colour.
np_set_status:
    pusha
    mov [np_status_col], al
    mov di, np_status
    mov cx, 16
    rep movsb
    mov di, sh_np_status
    mov cx, 16
    mov al, 0xFF
    rep stosb
    call np_status_show
    popa
    ret

np_status_show:
    test byte [win_notepad+win.flags], WF_OPEN
    jz .r
    pusha
    cmp byte [np_status], 0
    jne .has
    mov si, str_status_hint            ; first time: the hint
    mov di, np_status
    mov cx, 16
    rep movsb
    mov byte [np_status_col], C_DGRAY
.has:
    mov si, np_status
    mov di, sh_np_status
    mov cx, 16
    mov bx, NP_STATUS_Y * LINE_BYTES + NP_STATUS_XB
    mov al, [np_status_col]
    mov [op_fg], al
    mov byte [op_bg], C_WHITE
    mov byte [op_scale], 1
    call update_field
    popa
.r:
    ret

; status_timeout: called every timer tick; puts the hint back after a while.
status_timeout:
    cmp byte [status_on], 0
    je .r
    mov eax, [0x046C]
    sub eax, [status_tick]
    cmp eax, STATUS_TICKS
    jb .r
    mov byte [status_on], 0
    push si
    mov si, str_status_hint
    mov al, C_DGRAY
    call np_set_status
    pop si
.r:
    ret

; --- the document area --------------------------------------------------------

; doc_load: read the document area, keep only what Notepad can show.
doc_load:
    pusha
    mov ax, DOC_LBA
    mov bx, doc_buf
    mov cx, DOC_SECTORS
.read:
    mov di, 0x0201
    call disk_rw
    jc .failed
    inc ax
    add bx, 512
    loop .read
    mov si, doc_buf
    mov di, doc_buf
.clean:
    cmp si, doc_buf + DOC_MAX
    jae .end
    lodsb
    test al, al
    jz .end
    cmp al, 0x0D                       ; CR LF (edited elsewhere) -> LF
    je .clean
    cmp al, 0x0A
    je .keep
    cmp al, 0x09
    jne .not_tab
    mov al, ' '
.not_tab:
    cmp al, 0x20
    jb .bad
    cmp al, 0x7E
    jbe .keep
.bad:
    mov al, '?'
.keep:
    stosb
    jmp .clean
.end:
    mov ax, di
    sub ax, doc_buf
    mov [doc_len], ax
    mov cx, doc_buf + DOC_BYTES
    sub cx, di
    xor al, al
    rep stosb
    popa
    ret
.failed:
    mov di, doc_buf
    jmp .end

; doc_save: write the whole document area (text, NUL, zero padding).
doc_save:
    pusha
    mov ax, DOC_LBA
    mov bx, doc_buf
    mov cx, DOC_SECTORS
.write:
    mov di, 0x0301
    call disk_rw
    jc .failed
    inc ax
    add bx, 512
    loop .write
    mov si, str_status_saved
    mov al, C_BLACK
    jmp .show
.failed:
    mov si, str_status_failed
    mov al, C_BLACK
.show:
    call np_set_status
    mov eax, [0x046C]
    mov [status_tick], eax
    mov byte [status_on], 1
    popa
    ret

str_save:           db "Save", 0
str_status_hint:    db "F2 also saves   "
str_status_saved:   db "Saved to disk.  "
str_status_failed:  db "Save failed!    "
