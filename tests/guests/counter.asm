; The counter guest: a boot floppy that counts for ever, one count a timer tick.
;
; It shows "COUNT=<n>" on the first line of the text screen, n counting up by one
; at each tick of the BIOS timer (18.2 a second) from 0 when it boots. A machine
; saved and resumed goes on counting from where it was; one booted again starts
; from 0. Its count is also a dword at 0x7df0, for reading from outside (QMP).
;
; Build: nasm -f bin -o counter.bin counter.asm (tests/support/boot_floppy.py makes the floppy).

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov ax, 0x0003              ; 80x25 text mode
    int 0x10
    mov dword [count], 0
.tick:
    mov bx, [0x046c]            ; the BIOS's tick count
.wait:
    hlt
    cmp bx, [0x046c]
    je .wait
    inc dword [count]
    ; "COUNT=" and the count in decimal, at the top left.
    mov ax, 0xb800
    mov es, ax
    xor di, di
    mov si, label
.label:
    lodsb
    test al, al
    jz .number
    mov ah, 0x07
    stosw
    jmp .label
.number:
    mov eax, [count]
    mov ecx, 10
    xor bp, bp
.digits:
    xor edx, edx
    div ecx
    push dx
    inc bp
    test eax, eax
    jnz .digits
.put:
    pop ax
    add al, '0'
    mov ah, 0x07
    stosw
    dec bp
    jnz .put
    jmp .tick

label: db "COUNT=", 0

times 0x1f0 - ($ - $$) db 0
count: dd 0
times 510 - ($ - $$) db 0
dw 0xaa55
