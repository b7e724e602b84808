; clock.asm - time from the RTC: the desktop's corner clock and the Clock
; window. Reading the RTC costs a dozen port accesses, so it is not read on
; every tick. A second lasts 18.2 ticks and the change was seen at most one
; tick late, so the next change cannot be seen before 18 ticks later: wait
; that long, then read once per tick until the seconds change (usually the
; first read). A cell is redrawn only when its digit changes.

DESK_CLOCK_XB   equ 71                 ; x 568, bottom right corner
DESK_CLOCK_Y    equ 458
CLK_TIME_XB     equ 52                 ; Clock window (x 400, y 8): 3x digits
CLK_TIME_Y      equ 80
CLK_DATE_XB     equ 54                 ; 2x date
CLK_DATE_Y      equ 146
RTC_QUIET_TICKS equ 18
VMMOUSE_POLL_TICKS equ 16              ; see on_tick

clock_init:
    pusha
    mov di, time_str
    mov cx, 8 + 10
    mov al, ' '
    rep stosb
    call read_rtc
    mov byte [rtc_wait], RTC_QUIET_TICKS
    mov eax, [0x046C]
    mov [last_tick], eax
    popa
    ret

; on_tick: once per timer tick (EAX = tick count).
on_tick:
    mov [last_tick], eax
    ; The vmmouse is normally read when IRQ12 signals a packet; poll now and
    ; then anyway in case those interrupts never come, and on every tick if
    ; the BIOS could not enable the PS/2 mouse at all.
    cmp byte [mouse_mode], MOUSE_VMWARE
    jne .no_poll
    cmp byte [ps2_ok], 0
    je .poll
    test al, VMMOUSE_POLL_TICKS - 1
    jnz .no_poll
.poll:
    call poll_mouse
.no_poll:
    call status_timeout
    dec byte [rtc_wait]
    jnz .done
    mov byte [rtc_wait], 1
    mov al, [time_str+7]
    call read_rtc
    cmp al, [time_str+7]
    je .done
    mov byte [rtc_wait], RTC_QUIET_TICKS
    call clock_show
.done:
    ret

; read_rtc: time_str = "HH:MM:SS", date_str = "YYYY-MM-DD" (unchanged if
; the RTC is busy updating).
read_rtc:
    pusha
    mov ah, 0x02
    int 0x1A
    jc .done
    mov di, time_str
    mov al, ch
    call bcd2
    mov al, ':'
    stosb
    mov al, cl
    call bcd2
    mov al, ':'
    stosb
    mov al, dh
    call bcd2
    cmp dh, 0                          ; the date can only change at :00
    je .date
    cmp byte [date_str], ' '           ; ... or is still unknown
    jne .done
.date:
    mov ah, 0x04
    int 0x1A
    jc .done
    mov di, date_str
    mov al, ch
    call bcd2
    mov al, cl
    call bcd2
    mov al, '-'
    stosb
    mov al, dh
    call bcd2
    mov al, '-'
    stosb
    mov al, dl
    call bcd2
.done:
    popa
    ret

; bcd2: AL = packed BCD -> two ASCII digits at ES:DI.
bcd2:
    push ax
    shr al, 4
    add al, '0'
    stosb
    pop ax
    and al, 0x0F
    add al, '0'
    stosb
    ret

; clock_show: update whatever clock is on screen.
clock_show:
    pusha
    mov si, time_str
    mov di, sh_desk_time
    mov cx, 8
    mov bx, DESK_CLOCK_Y * LINE_BYTES + DESK_CLOCK_XB
    mov byte [op_fg], C_WHITE
    mov byte [op_bg], C_CYAN
    mov byte [op_scale], 1
    call update_field
    test byte [win_clock+win.flags], WF_OPEN
    jz .done
    mov si, time_str
    mov di, sh_clk_time
    mov cx, 8
    mov bx, CLK_TIME_Y * LINE_BYTES + CLK_TIME_XB
    mov byte [op_fg], C_BLUE
    mov byte [op_bg], C_WHITE
    mov byte [op_scale], 3
    call update_field
    mov si, date_str
    mov di, sh_clk_date
    mov cx, 10
    mov bx, CLK_DATE_Y * LINE_BYTES + CLK_DATE_XB
    mov byte [op_fg], C_BLACK
    mov byte [op_scale], 2
    call update_field
.done:
    popa
    ret

; desk_clock_draw: after the desktop was repainted.
desk_clock_draw:
    pusha
    mov di, sh_desk_time
    mov cx, 8
    mov al, 0xFF
    rep stosb
    call clock_show
    popa
    ret

; clockwin_draw: client area of the Clock window.
clockwin_draw:
    pusha
    mov di, sh_clk_time
    mov cx, 8 + 10                     ; sh_clk_date follows
    mov al, 0xFF
    rep stosb
    call clock_show
    popa
    ret
