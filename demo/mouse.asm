; mouse.asm - pointer input.
;
; Preferred: QEMU's VMware mouse (vmport), which gives absolute positions,
; so the guest pointer follows the visitor's browser pointer exactly. It is
; read by port I/O on 0x5658, but QEMU only tells the guest that there is
; something to read by pushing a (dummy) PS/2 mouse packet: vmmouse.c calls
; i8042_isa_mouse_fake_event(), which ps2.c only turns into a packet and an
; IRQ12 while the aux device is enabled in stream mode. So the PS/2 mouse is
; always enabled through the BIOS (int 15h C2xx): its IRQ12 callback wakes
; the HLT in the main loop, which then drains the vmmouse queue. The queue
; is also polled on every timer tick, in case IRQ12 never comes.
;
; Fallback when vmport is absent (GETVERSION does not return the magic) or
; QEMU drops the vmmouse: the same PS/2 packets, used as relative motion.

MOUSE_NONE      equ 0
MOUSE_VMWARE    equ 1
MOUSE_PS2       equ 2

VMPORT_MAGIC    equ 0x564D5868
VMPORT_PORT     equ 0x5658
VMPORT_GETVERSION equ 10
VMMOUSE_DATA    equ 39                 ; ABSPOINTER_DATA
VMMOUSE_STATUS  equ 40                 ; ABSPOINTER_STATUS
VMMOUSE_COMMAND equ 41                 ; ABSPOINTER_COMMAND
VMMOUSE_ENABLE  equ 0x45414552         ; "READ_ID": enable, queues the version
VMMOUSE_REQUEST_ABSOLUTE equ 0x53424152
VMMOUSE_VERSION_ID equ 0x3442554A
VMMOUSE_ERROR   equ 0xFFFF             ; status high word when disabled
VMMOUSE_LEFT    equ 0x20

mouse_init:
    pusha
    mov word [mouse_x], SCR_W / 2
    mov word [mouse_y], SCR_H / 2
    mov ax, 0xC205                     ; initialise, 3-byte packets
    mov bh, 3
    int 0x15
    jc .no_ps2
    xor ax, ax
    mov es, ax
    mov bx, ps2_callback
    mov ax, 0xC207                     ; far callback for each packet
    int 0x15
    jc .no_ps2
    mov ax, 0xC200                     ; enable: aux port, IRQ12, stream mode
    mov bh, 1
    int 0x15
    jc .no_ps2
    mov byte [ps2_ok], 1
.no_ps2:
    xor ax, ax
    mov es, ax
    call vmmouse_enable
    jc .try_ps2
    mov byte [mouse_mode], MOUSE_VMWARE
    jmp .done
.try_ps2:
    cmp byte [ps2_ok], 0
    je .done
    mov byte [mouse_mode], MOUSE_PS2
.done:
    popa
    ret

; vmport_call: ECX = command, EBX = argument -> EAX, EBX, ECX, EDX.
vmport_call:
    mov eax, VMPORT_MAGIC
    mov dx, VMPORT_PORT
    in eax, dx
    ret

; vmmouse_enable: the same handshake as the Linux and Xorg drivers.
; CF set if there is no usable vmmouse.
vmmouse_enable:
    pushad
    mov ebx, ~VMPORT_MAGIC & 0xFFFFFFFF
    mov ecx, VMPORT_GETVERSION
    call vmport_call
    cmp ebx, VMPORT_MAGIC              ; no vmport: the port reads as FFFFFFFF
    jne .fail
    mov ebx, VMMOUSE_ENABLE
    mov ecx, VMMOUSE_COMMAND
    call vmport_call
    xor ebx, ebx
    mov ecx, VMMOUSE_STATUS
    call vmport_call
    mov edx, eax
    shr edx, 16
    cmp dx, VMMOUSE_ERROR
    je .fail
    test ax, ax                        ; the version word must be queued
    jz .fail
    mov ebx, 1
    mov ecx, VMMOUSE_DATA
    call vmport_call
    cmp eax, VMMOUSE_VERSION_ID
    jne .fail
    mov ebx, VMMOUSE_REQUEST_ABSOLUTE
    mov ecx, VMMOUSE_COMMAND
    call vmport_call
    popad
    clc
    ret
.fail:
    popad
    stc
    ret

; ps2_callback: called far by the BIOS IRQ12 handler for every packet, on
; the BIOS stack with interrupts on: [bp+12] status, [bp+10] X, [bp+8] Y.
ps2_callback:
    push bp
    mov bp, sp
    push ds
    push ax
    push bx
    push cs
    pop ds
    mov byte [mouse_event], 1
    mov al, [bp+12]
    test al, 0xC0                      ; overflow: the deltas are meaningless
    jnz .buttons
    mov bl, [bp+10]
    mov bh, 0
    test al, 0x10                      ; X sign (9-bit two's complement)
    jz .x_pos
    mov bh, 0xFF
.x_pos:
    add [ps2_dx], bx
    mov bl, [bp+8]
    mov bh, 0
    test al, 0x20
    jz .y_pos
    mov bh, 0xFF
.y_pos:
    sub [ps2_dy], bx                   ; PS/2 Y grows upwards, the screen's down
.buttons:
    and al, 7
    mov [ps2_buttons], al
    test al, 1
    jz .no_left
    mov byte [ps2_latch], 1            ; a press shorter than one loop pass still counts
.no_left:
    pop bx
    pop ax
    pop ds
    pop bp
    retf

; poll_mouse: apply all pointer input that arrived since the last pass.
poll_mouse:
    mov byte [mouse_event], 0          ; before reading, so no wake-up is lost
    cmp byte [mouse_mode], MOUSE_VMWARE
    je .vmware
    cmp byte [mouse_mode], MOUSE_PS2
    je .ps2
    ret

.vmware:
    pushad
    mov bp, 64                         ; bounded: never starve the keyboard
.packet:
    xor ebx, ebx
    mov ecx, VMMOUSE_STATUS
    call vmport_call
    mov edx, eax
    shr edx, 16
    cmp dx, VMMOUSE_ERROR
    je .vm_lost
    cmp ax, 4                          ; a packet is 4 words
    jb .vm_done
    mov ebx, 4
    mov ecx, VMMOUSE_DATA
    call vmport_call                   ; EAX buttons, EBX x, ECX y (0..FFFF)
    mov esi, eax
    ; QEMU scales the visitor's pixel p to floor(p * 7FFFh / W) and vmmouse
    ; doubles it. Dividing back with rounding up lands on exactly p again; a
    ; plain truncating scale would put the pointer a pixel up and to the left.
    mov edi, 32767
    movzx eax, bx
    shr eax, 1
    imul eax, eax, SCR_W
    add eax, 32766
    xor edx, edx
    div edi
    cmp eax, SCR_W - 1
    jbe .x_ok
    mov eax, SCR_W - 1
.x_ok:
    push ax
    movzx eax, cx
    shr eax, 1
    imul eax, eax, SCR_H
    add eax, 32766
    xor edx, edx
    div edi
    cmp eax, SCR_H - 1
    jbe .y_ok
    mov eax, SCR_H - 1
.y_ok:
    mov bx, ax
    pop ax
    xor cl, cl
    test si, VMMOUSE_LEFT
    jz .up
    inc cl
.up:
    call pointer_update
    dec bp
    jnz .packet
    mov byte [mouse_event], 1          ; more may be queued: come back next pass
.vm_done:
    popad
    ret
.vm_lost:
    call cursor_hide
    mov al, MOUSE_NONE
    cmp byte [ps2_ok], 0
    je .set_mode
    mov al, MOUSE_PS2
.set_mode:
    mov [mouse_mode], al
    popad
    ret

.ps2:
    pusha
    cli
    mov ax, [ps2_dx]
    mov bx, [ps2_dy]
    mov word [ps2_dx], 0
    mov word [ps2_dy], 0
    mov cl, [ps2_buttons]
    mov ch, [ps2_latch]
    mov byte [ps2_latch], 0
    sti
    add ax, [mouse_x]
    jge .x_min
    xor ax, ax
.x_min:
    cmp ax, SCR_W - 1
    jle .x_max
    mov ax, SCR_W - 1
.x_max:
    add bx, [mouse_y]
    jge .y_min
    xor bx, bx
.y_min:
    cmp bx, SCR_H - 1
    jle .y_max
    mov bx, SCR_H - 1
.y_max:
    and cl, 1
    push cx
    or cl, ch
    and cl, 1
    call pointer_update                ; press (possibly already released)
    pop cx
    call pointer_update                ; current state
    popa
    ret

; pointer_update: AX, BX = position, CL = 1 if the left button is down.
; A press (up -> down) is a click.
pointer_update:
    pusha
    cmp ax, [mouse_x]
    jne .moved
    cmp bx, [mouse_y]
    je .buttons
.moved:
    call cursor_hide                   ; shown again at the end of the main loop pass
    mov [mouse_x], ax
    mov [mouse_y], bx
.buttons:
    mov ch, [prev_left]
    mov [prev_left], cl
    test cl, cl
    jz .done
    test ch, ch
    jnz .done
    mov ax, [mouse_x]
    mov bx, [mouse_y]
    call on_click
.done:
    popa
    ret
