; The keyboard guest: a boot floppy that stands in for DOS with KEYB set to a
; layout (the tests use German, KEYB GR). It reads the PC keyboard's scancodes
; itself (port 60h, the keyboard interrupt masked), tracks Shift and AltGr, and
; turns each key into a code page 437 character with the layout's tables
; (keymap.inc, written by tests/guests/keymap_table.py from QEMU's keymap: not
; by the portal's code). What it types shows on row 12; Enter compares the line
; with the one the tests type (EXPECTED below) and paints the whole screen green
; when they are equal, red when not; the next key paints it grey again.
; Backspace takes back a character.
;
; Build: python tests/guests/keymap_table.py de > keymap.inc;
;        nasm -f bin -I <dir of keymap.inc>/ -o keyboard.bin keyboard.asm
; (tests/support/keyboard_guest.py makes the floppy).

bits 16
org 0x7c00

SECTORS   equ 4                 ; what follows the boot sector
LINE_ROW  equ 12
LINE_MAX  equ 76
GREY      equ 0x70
GREEN     equ 0x2f
RED       equ 0x4f

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov si, 3                   ; a floppy read may need a retry while the motor spins up
.load:
    mov ax, 0x0200 + SECTORS
    mov cx, 0x0002              ; cylinder 0, sector 2
    xor dh, dh                  ; head 0 (dl: the boot drive, from the BIOS)
    mov bx, main
    int 0x13
    jnc main
    xor ax, ax
    int 0x13
    dec si
    jnz .load
.halt:
    hlt
    jmp .halt

    times 510 - ($ - $$) db 0
    dw 0xaa55

main:
    mov ax, 0x0003              ; 80x25 text mode
    int 0x10
    mov ah, 0x01                ; no cursor: a still screen between keys
    mov cx, 0x2000
    int 0x10
    cli
    in al, 0x21                 ; the keyboard interrupt masked: the scancodes are read here
    or al, 0x02
    out 0x21, al
    sti
    mov ax, 0xb800
    mov es, ax
    mov bl, GREY
    call paint
    mov si, title
    mov di, (2 * 80 + 2) * 2
    call print
    mov si, expected
    mov di, (4 * 80 + 2) * 2
    call print

next_byte:
    in al, 0x64
    test al, 0x01
    jz next_byte
    test al, 0x20               ; the mouse's: not a key
    in al, 0x60
    jnz next_byte
    cmp al, 0xe0
    jne .code
    mov byte [extended], 1
    jmp next_byte
.code:
    mov bl, al
    and bl, 0x7f                ; the key; bit 7 of al: released
    cmp byte [extended], 0
    je .plain
    mov byte [extended], 0
    cmp bl, 0x38                ; E0 38: right Alt, AltGr
    jne next_byte
    call held
    mov [altgr], ah
    jmp next_byte
.plain:
    cmp bl, 0x2a
    je .shift
    cmp bl, 0x36
    jne .press
.shift:
    call held
    mov [shift], ah
    jmp next_byte
.press:
    test al, 0x80
    jnz next_byte
    cmp byte [shown], 0         ; the first key after a verdict: grey again
    je .type
    mov byte [shown], 0
    push bx
    mov bl, GREY
    call paint
    pop bx
.type:
    cmp bl, 0x1c
    je enter
    cmp bl, 0x0e
    je backspace
    xor bh, bh
    mov si, keymap_plain
    cmp byte [altgr], 0
    je .not_altgr
    mov si, keymap_altgr
    jmp .look
.not_altgr:
    cmp byte [shift], 0
    je .look
    mov si, keymap_shifted
.look:
    mov al, [si + bx]
    or al, al
    jz next_byte
    mov bx, [length]
    cmp bx, LINE_MAX
    jae next_byte
    mov [line + bx], al
    inc word [length]
    shl bx, 1
    mov [es:(LINE_ROW * 80 + 2) * 2 + bx], al
    jmp next_byte

backspace:
    mov bx, [length]
    or bx, bx
    jz next_byte
    dec bx
    mov [length], bx
    shl bx, 1
    mov byte [es:(LINE_ROW * 80 + 2) * 2 + bx], ' '
    jmp next_byte

enter:
    mov bl, RED
    mov cx, [length]
    cmp cx, expected_end - expected
    jne .verdict
    mov si, line
    mov di, expected
    push es
    push ds
    pop es
    repe cmpsb
    pop es
    jne .verdict
    mov bl, GREEN
.verdict:
    call paint
    mov byte [shown], 1
    ; The line stays on row 14 for a person (or a failed test's screenshot); row 12 empties.
    mov di, (14 * 80) * 2
    mov cx, 80
.clear_last:
    mov byte [es:di], ' '
    add di, 2
    loop .clear_last
    mov cx, [length]
    mov si, line
    mov di, (14 * 80 + 2) * 2
    jcxz .emptied
.copy:
    lodsb
    mov [es:di], al
    mov byte [es:(LINE_ROW - 14) * 160 + di], ' '
    add di, 2
    loop .copy
.emptied:
    mov word [length], 0
    jmp next_byte

; ah = 1 for a key pressed (al bit 7 clear), 0 for one released.
held:
    mov ah, 1
    test al, 0x80
    jz .done
    xor ah, ah
.done:
    ret

; Every cell's attribute set to bl.
paint:
    mov di, 1
    mov cx, 80 * 25
.cell:
    mov [es:di], bl
    add di, 2
    loop .cell
    ret

; The zero-ended string at ds:si at es:di.
print:
    lodsb
    or al, al
    jz .done
    mov [es:di], al
    add di, 2
    jmp print
.done:
    ret

title:    db "Keyboard guest (KEYB GR stand-in): type the line below, then Enter.", 0
; What the tests type, in code page 437: "Grüße, Straße! y/z @{}<>|§µ€"
; without the euro sign (no code page 437 byte; the portal refuses it).
expected: db "Gr", 0x81, 0xe1, "e, Stra", 0xe1, "e! y/z @{}<>|", 0x15, 0xe6
expected_end:
          db 0
extended: db 0
shift:    db 0
altgr:    db 0
shown:    db 0
length:   dw 0

%include "keymap.inc"

line:     times LINE_MAX db 0

    times 512 * (SECTORS + 1) - ($ - $$) db 0
