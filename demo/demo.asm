; Portal Desktop - the portal's default exhibit: a small, free stand-in for the
; look of Windows 3.1, booted by SeaBIOS from a raw hard disk (drive 80h) in
; 16-bit real mode. Assembled with `nasm -f bin` into the whole disk image.
;
; Disk layout (512-byte sectors, exactly 2048 sectors = 1 MiB):
;   LBA 0         MBR: loads the program sectors to 0000:7E00 and jumps there.
;                 No partition table (not needed); ends with the 55AA signature.
;   LBA 1..N      the program (N = PROG_SECTORS, at most 62; rest up to 63 zero).
;   LBA 64..71    document area, 8 sectors = 4096 bytes: the Notepad text.
;                 Encoding: ASCII, printable 0x20..0x7E, lines separated by a
;                 single LF (0x0A), terminated by a NUL byte (so at most 4095
;                 characters); every byte after the NUL is zero. Loaded at boot,
;                 written back by Save/F2 with int 13h AH=03h.
;   LBA 72..2047  zero.
;
; Memory (one segment: CS = DS = ES = SS = 0 except while drawing):
;   0000:0600..~3800 variables, document buffer, RAM copy of the font
;                    (zeroed at start; see vars.asm, checked to stay < 7000)
;   0000:7C00        MBR (its disk routine and geometry stay in use); the stack
;                    grows down from here
;   0000:7E00        program

bits 16
cpu 486
org 0x7C00

PROG_LOAD    equ 0x7E00
PROG_MAX     equ 62
DOC_LBA      equ 64
DOC_SECTORS  equ 8
DOC_BYTES    equ DOC_SECTORS * 512
DOC_MAX      equ DOC_BYTES - 1        ; keep room for the NUL terminator

; Timing marks for development: assemble with -DDEBUGCON and run QEMU with
; an isa-debugcon device on port 0x402 to get them in its log.
%macro DBG 1
%ifdef DEBUGCON
    push ax
    push dx
    mov dx, 0x402
    mov al, %1
    out dx, al
    pop dx
    pop ax
%endif
%endmacro

; ---------------------------------------------------------------------------
; Sector 0: MBR
; ---------------------------------------------------------------------------
mbr:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ds, ax
    mov es, ax
    sti
    cld
    jmp 0x0000:.go                     ; some BIOSes enter at 07C0:0000
.go:
    mov [boot_drive], dl
    ; Ask the BIOS for its geometry so LBA->CHS works whatever it chose
    ; (QEMU guesses 2/16/63 for this size, but do not rely on it).
    mov ah, 0x08
    int 0x13
    jc .geometry_done
    and cx, 0x3F
    jz .geometry_done
    mov [spt], cx
    movzx dx, dh
    inc dx
    mov [heads], dx
.geometry_done:
    xor ax, ax
    mov es, ax                         ; AH=08h may change ES:DI
    mov ax, 1
    mov bx, PROG_LOAD
    mov cx, PROG_SECTORS
.load:
    mov di, 0x0201
    call disk_rw
    jc .fail
    inc ax
    add bx, 512
    loop .load
    jmp prog_main
.fail:
    mov si, msg_disk_error
.print:
    lodsb
    test al, al
    jz .halt
    mov ah, 0x0E
    mov bx, 0x0007
    int 0x10
    jmp .print
.halt:
    hlt
    jmp .halt

; disk_rw: transfer one sector between LBA AX and ES:BX on the boot drive.
; DI = 0x0201 to read, 0x0301 to write (the AH/AL of int 13h). CF set on
; failure after three tries. Preserves all registers. One sector at a time
; keeps every request inside one track, which any BIOS accepts.
disk_rw:
    pusha
    mov si, 3
.try:
    push ax
    xor dx, dx
    div word [spt]                     ; AX = track, DX = sector - 1
    mov cl, dl
    inc cl
    xor dx, dx
    div word [heads]                   ; AX = cylinder, DX = head
    mov dh, dl
    mov ch, al
    shl ah, 6
    or cl, ah                          ; cylinder bits 8-9 in CL bits 6-7
    mov dl, [boot_drive]
    mov ax, di
    int 0x13
    pop ax
    jnc .ok
    push ax
    xor ax, ax                         ; reset the drive, then retry
    mov dl, [boot_drive]
    int 0x13
    pop ax
    dec si
    jnz .try
    stc
.ok:
    popa                               ; POPA and RET keep CF
    ret

spt:        dw 63
heads:      dw 16
boot_drive: db 0x80
msg_disk_error: db "Portal demo: disk read error", 0

    times 510 - ($ - $$) db 0
    dw 0xAA55

; ---------------------------------------------------------------------------
; Program (LBA 1..)
; ---------------------------------------------------------------------------
prog_start:

prog_main:
    ; The variable area may hold junk after a warm reboot.
    mov di, VARS_START
    mov cx, VARS_END - VARS_START
    xor al, al
    rep stosb

    mov ax, 0x0012                     ; 640x480, 16 colours
    int 0x10
    push es
    push bp
    mov ax, 0x1130                     ; pointer to the VGA BIOS 8x16 font
    mov bh, 0x06
    int 0x10
    ; Work from a RAM copy of the font: the text loops read it a lot and
    ; segment 0 is the cheapest place to address it from.
    push ds
    push es
    pop ds
    mov si, bp
    push word 0
    pop es
    mov di, font_ram
    mov cx, 256 * 16 / 4
    rep movsd
    pop ds
    mov word [font_seg], 0
    mov word [font_off], font_ram
    pop bp
    pop es
    call vga_default_state
    ; Replace the BIOS timer handler by a minimal one (see timer_isr).
    cli
    mov word [0x08 * 4], timer_isr
    mov word [0x08 * 4 + 2], 0
    sti
    DBG 'M'
    call doc_load
    call mouse_init
    call clock_init
    DBG 'R'
    call redraw_all
    DBG 'D'

; The main loop sleeps in HLT until an interrupt brings work: a key in
; the BIOS buffer, a mouse packet (IRQ12 callback) or a timer tick. The
; checks only read memory, with interrupts off, and STI;HLT is atomic, so an
; interrupt arriving meanwhile cannot be missed. Hosts may emulate real mode
; instruction by instruction, so a wake-up that finds nothing to do must
; cost only a handful of instructions.
main_loop:
    cli
    mov ax, [0x041A]                   ; BIOS keyboard buffer head
    cmp ax, [0x041C]                   ; ... and tail
    jne .keys
    cmp byte [mouse_event], 0
    jne .mouse
    mov eax, [0x046C]                  ; BIOS timer ticks (18.2 Hz)
    cmp eax, [last_tick]
    jne .tick
    sti
    hlt
    jmp main_loop
.keys:
    sti
    mov ah, 0x10                       ; extended read: never drops (and waits for) a key
    int 0x16
    call handle_key
    jmp .done
.mouse:
    sti
    call poll_mouse
    jmp .done
.tick:
    sti
    call on_tick
    call sound_tick
.done:
    call cursor_show
    jmp main_loop

; timer_isr: IRQ0. Only what the BIOS tick must do: count ticks in the BIOS
; data area (with the midnight rollover that int 1Ah expects) and EOI.
; SeaBIOS's own handler does much more (floppy motor, USB polling, int 1Ch),
; which alone cost about 1 % of a host core when real mode is emulated.
; Consequence: USB keyboards/tablets, which SeaBIOS polls from IRQ0, would
; not work here; the exhibit uses QEMU's PS/2 keyboard and vmmouse.
timer_isr:
    push ax
    push ds
    xor ax, ax
    mov ds, ax
    add word [0x046C], 1
    adc word [0x046E], 0
    cmp word [0x046E], 0x0018          ; 0x1800B0 ticks per day
    jb .eoi
    cmp word [0x046C], 0x00B0
    jb .eoi
    mov [0x046C], ax
    mov [0x046E], ax
    mov byte [0x0470], 1               ; midnight flag
.eoi:
    mov al, 0x20
    out 0x20, al
    pop ds
    pop ax
    iret

; handle_key: AX = BIOS key (AH scan code, AL ASCII). F5 and F6 play a tune;
; all typing goes to Notepad, which is reopened if the visitor had closed it.
handle_key:
    pusha
    call sound_key                     ; F5, F6: a tune
    jc .done
    cmp ax, 0x3C00                     ; F2
    je .save
    cmp al, 0x13                       ; Ctrl-S
    je .save
    cmp al, 0x08
    je .backspace
    cmp al, 0x0D
    je .enter
    cmp al, 0x09
    je .tab
    cmp al, 0x20
    jb .done
    cmp al, 0x7E
    ja .done
.insert:
    call notepad_open
    call np_insert
    jmp .done
.tab:
    mov al, ' '
    jmp .insert
.enter:
    mov al, 0x0A
    jmp .insert
.backspace:
    call notepad_open
    call np_backspace
    jmp .done
.save:
    call notepad_open
    call doc_save
.done:
    popa
    ret

%include "vga.asm"
%include "ui.asm"
%include "notepad.asm"
%include "mouse.asm"
%include "clock.asm"
%include "sound.asm"

prog_end:
PROG_SECTORS equ (prog_end - prog_start + 511) / 512
    ; (a negative TIMES count stops the build)
    times -(PROG_SECTORS > PROG_MAX) db 0   ; program must end before LBA 63

    times DOC_LBA * 512 - ($ - $$) db 0

; ---------------------------------------------------------------------------
; LBA 64..71: the document a new visitor sees.
; ---------------------------------------------------------------------------
doc_initial:
    db "Welcome! Type here, press Save, then reboot: your text stays on "
    db "this visit's disk. A new visitor starts fresh.", 0x0A
doc_initial_end:
    db 0
    times -(doc_initial_end - doc_initial > DOC_MAX) db 0
    times (DOC_LBA + DOC_SECTORS) * 512 - ($ - $$) db 0

    times 2048 * 512 - ($ - $$) db 0

; ---------------------------------------------------------------------------
; Variables (not part of the image)
; ---------------------------------------------------------------------------
%include "vars.asm"

section .text
    times -(VARS_END > 0x7000) db 0          ; variables must stay below the stack
