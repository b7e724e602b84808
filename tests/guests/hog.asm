; The memory hog: a boot floppy that writes to every page of the machine's memory.
;
; It shows "HOG" while it works, switches to 32-bit protected mode (flat
; segments) and writes a different dword (the page's own address) to each 4 KiB
; page from 1 MiB up to the top of memory as the BIOS reports it (INT 15h
; E801h), so that the QEMU running it really holds all of its guest memory.
; Then it shows "DONE" and halts. A machine whose memory limit is below its
; guest memory plus QEMU's own is stopped by the kernel before "DONE".
;
; Build: nasm -f bin -o hog.bin hog.asm (tests/support/hog.py makes the floppy).

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov ax, 0x0003              ; 80x25 text mode
    int 0x10
    mov ax, 0xb800
    mov es, ax
    mov dword [es:0], 0x1f4f1f48 ; "HO", white on blue
    mov word [es:4], 0x1f47      ; "G"
    ; Memory above 1 MiB: AX/CX KiB between 1 and 16 MiB, BX/DX 64 KiB blocks above.
    mov ax, 0xe801
    int 0x15
    jc .small
    test ax, ax
    jnz .counted
    mov ax, cx
    mov bx, dx
.counted:
    movzx eax, ax
    shl eax, 10                 ; bytes between 1 and 16 MiB
    movzx ebx, bx
    shl ebx, 16                 ; bytes above 16 MiB
    add eax, ebx
    add eax, 0x100000
    mov [top], eax
    jmp .protected
.small:
    mov dword [top], 0x1000000  ; no answer: 16 MiB
.protected:
    in al, 0x92                 ; fast A20
    or al, 2
    and al, 0xfe
    out 0x92, al
    cli
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp 0x08:flat

bits 32
flat:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7c00
    mov ecx, [top]
    mov edi, 0x100000
.touch:
    mov [edi], edi
    add edi, 0x1000
    cmp edi, ecx
    jb .touch
    mov dword [0xb8000], 0x2f4f2f44 ; "DO", white on green
    mov dword [0xb8004], 0x2f452f4e ; "NE"
.halt:
    hlt
    jmp .halt

top: dd 0

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08: code, flat 4 GiB, 32-bit
    dq 0x00cf92000000ffff       ; 0x10: data, flat 4 GiB
gdt_descriptor:
    dw gdt_descriptor - gdt - 1
    dd gdt

times 510 - ($ - $$) db 0
dw 0xaa55
