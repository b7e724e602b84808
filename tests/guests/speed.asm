; The speed guest: a boot floppy that measures how fast it runs a tight loop,
; against the real-time clock (wall time) and the PIT (the guest's own time),
; and prints both, for ever:
;
;     RTC=<loop iterations per second> PIT=<loop iterations per second>
;
; The loop is the portal's reference for period speeds (docs/curators.md,
; "Period-correct speed"): 60 register increments on four registers, then
; dec cx / jnz. From Intel's clock counts one iteration takes 130 clocks on a
; 386, 64 on a 486 and 31 on a Pentium (simple instructions paired).
; It also serves as the busy guest of bench/speed.py: it never idles. Its own
; timer count is a dword at 0x7df0, for reading from outside (QMP).
;
; Build: nasm -f bin -o speed.bin speed.asm (tests/support/speed.py makes the floppy).

bits 16
org 0x7c00

BLOCK_ITERATIONS equ 256
RTC_SECONDS      equ 5
PIT_TICKS        equ 36

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov ax, 0x0003              ; 80x25 text mode
    int 0x10
    ; A timer handler of its own: the BIOS's runs thousands of instructions a tick,
    ; which a period speed (counting instructions) would charge to the loop.
    cli
    mov word [8 * 4], timer
    mov word [8 * 4 + 2], 0
    sti

measure:
    ; --- against the real-time clock: whole seconds of wall time
    call rtc_second
    mov bl, al
.edge:
    call rtc_second
    cmp al, bl
    je .edge
    mov bl, al
    mov bh, RTC_SECONDS
    xor edi, edi
.rtc_block:
    call block
    inc edi
    call rtc_second
    cmp al, bl
    je .rtc_block
    mov bl, al
    dec bh
    jnz .rtc_block
    mov eax, edi                ; blocks in RTC_SECONDS s, times 256 / RTC_SECONDS
    shl eax, 8
    xor edx, edx
    mov ecx, RTC_SECONDS
    div ecx
    mov si, rtc_text
    call print
    call print_decimal

    ; --- against the PIT: its ticks, 18.2065 a second
    mov bx, [ticks]
.tick:
    cmp bx, [ticks]
    je .tick
    mov bx, [ticks]
    add bx, PIT_TICKS
    xor edi, edi
.pit_block:
    call block
    inc edi
    cmp bx, [ticks]
    jne .pit_block
    mov eax, edi                ; blocks * 256 * 18.2065 / 36
    shl eax, 8
    mov ecx, 182065
    mul ecx
    mov ecx, 360000
    div ecx
    mov si, pit_text
    call print
    call print_decimal
    mov si, line_end
    call print
    jmp measure

; IRQ 0, the PIT's 18.2065 Hz: count it.
timer:
    inc dword [cs:ticks]
    push ax
    mov al, 0x20
    out 0x20, al
    pop ax
    iret

; One block: BLOCK_ITERATIONS iterations of the reference loop (62 instructions each).
; Uses ax, dx, si, bp and cx.
block:
    mov cx, BLOCK_ITERATIONS
.loop:
%rep 15
    inc ax
    inc dx
    inc si
    inc bp
%endrep
    dec cx
    jnz .loop
    ret

; al = the RTC's seconds, read outside an update.
rtc_second:
.busy:
    mov al, 0x0a
    out 0x70, al
    in al, 0x71
    test al, 0x80
    jnz .busy
    xor al, al
    out 0x70, al
    in al, 0x71
    ret

; Print the NUL-terminated string at si (eax kept).
print:
    push eax
.next:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0e
    xor bx, bx
    int 0x10
    jmp .next
.done:
    pop eax
    ret

; Print eax in decimal.
print_decimal:
    mov ecx, 10
    xor bp, bp
.digit:
    xor edx, edx
    div ecx
    push dx
    inc bp
    test eax, eax
    jnz .digit
.out:
    pop ax
    add al, '0'
    mov ah, 0x0e
    xor bx, bx
    int 0x10
    dec bp
    jnz .out
    ret

rtc_text: db "RTC=", 0
pit_text: db " PIT=", 0
line_end: db 13, 10, 0

; The tick count at a fixed address (0x7df0), so a test can read the guest's time.
times 0x1f0 - ($ - $$) db 0
ticks:    dd 0

times 510 - ($ - $$) db 0
dw 0xaa55
