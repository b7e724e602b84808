; ui.asm - desktop, windows, buttons, icons and mouse clicks.
;
; Windows never overlap (fixed places), so a window can be drawn or updated
; on its own; closing one simply redraws the whole desktop.

struc win
    .x      resw 1
    .y      resw 1
    .w      resw 1
    .h      resw 1
    .title  resw 1
    .menu   resw 1                     ; menu text followed by its underline text, or 0
    .draw   resw 1                     ; draws the client area ([wx],[wy] set), or 0
    .click  resw 1                     ; AX,BX = click relative to the window, or 0
    .flags  resb 1
    .pad    resb 1
endstruc

WF_OPEN     equ 1
WF_CLOSE    equ 2                      ; has a close box

%macro WINDOW 9                        ; x, y, w, h, title, menu, draw, click, flags
    istruc win
        at win.x,     dw %1
        at win.y,     dw %2
        at win.w,     dw %3
        at win.h,     dw %4
        at win.title, dw %5
        at win.menu,  dw %6
        at win.draw,  dw %7
        at win.click, dw %8
        at win.flags, db %9
        at win.pad,   db 0
    iend
%endmacro

windows:
win_progman: WINDOW   8,   8, 376, 200, str_progman, menu_progman, progman_draw, progman_click, WF_OPEN
win_clock:   WINDOW 400,   8, 232, 200, str_clock,   menu_clock,   clockwin_draw, 0,            WF_CLOSE
win_notepad: WINDOW   8, 216, 432, 256, str_notepad, menu_notepad, np_draw,      np_click,      WF_OPEN | WF_CLOSE
win_about:   WINDOW 448, 216, 184, 200, str_about,   0,            about_draw,   about_click,   WF_CLOSE
NUM_WINDOWS equ ($ - windows) / win_size

; Rectangle relative to the current window [wx],[wy],[ww],[wh]. A negative
; x/y offset counts from the right/bottom edge, a width/height <= 0 is
; relative to the window's width/height. Offsets must be literal numbers.
%macro WRECT 5
    mov ax, [wx]
%if (%1) < 0
    add ax, [ww]
%endif
    add ax, %1
    mov bx, [wy]
%if (%2) < 0
    add bx, [wh]
%endif
    add bx, %2
%if (%3) <= 0
    mov cx, [ww]
    add cx, %3
%else
    mov cx, %3
%endif
%if (%4) <= 0
    mov dx, [wh]
    add dx, %4
%else
    mov dx, %4
%endif
    mov si, %5
    call fill_rect
%endmacro

%macro WTEXT 4                         ; x offset, y offset, string, colour
    mov ax, [wx]
    add ax, %1
    mov bx, [wy]
    add bx, %2
    mov si, %3
    mov cl, %4
    call draw_text
%endmacro

; Rectangle relative to the icon being drawn ([ix],[iy]).
%macro IRECT 5
    mov ax, [ix]
    add ax, %1
    mov bx, [iy]
    add bx, %2
    mov cx, %3
    mov dx, %4
    mov si, %5
    call fill_rect
%endmacro

; Jump to %5 if AX,BX lies in the box x=%1, y=%2, w=%3, h=%4.
%macro HIT 5
    cmp ax, %1
    jb %%no
    cmp ax, (%1) + (%3)
    jae %%no
    cmp bx, %2
    jb %%no
    cmp bx, (%2) + (%4)
    jb %5
%%no:
%endmacro

; strlen: SI = string -> CX = length.
strlen:
    push si
    xor cx, cx
.l:
    cmp byte [si], 0
    je .e
    inc si
    inc cx
    jmp .l
.e:
    pop si
    ret

redraw_all:
    pusha
    xor ax, ax
    xor bx, bx
    mov cx, SCR_W
    mov dx, SCR_H
    mov si, C_CYAN
    call fill_rect
    mov bx, windows
    mov cx, NUM_WINDOWS
.l:
    test byte [bx+win.flags], WF_OPEN
    jz .n
    call draw_window
.n:
    add bx, win_size
    loop .l
    call desk_clock_draw
    popa
    ret

; open_window / close_window: BX = window.
open_window:
    test byte [bx+win.flags], WF_OPEN
    jnz .r
    or byte [bx+win.flags], WF_OPEN
    call draw_window
.r:
    ret

close_window:
    and byte [bx+win.flags], ~WF_OPEN & 0xFF
    jmp redraw_all

; draw_window: BX = window. A Windows 3.1 style frame: black outline, grey
; sizing border with corner marks, blue caption, control-menu box, optional
; close box and menu bar, white client area.
draw_window:
    pusha
    mov [cur_win], bx
    mov ax, [bx+win.x]
    mov [wx], ax
    mov ax, [bx+win.y]
    mov [wy], ax
    mov ax, [bx+win.w]
    mov [ww], ax
    mov ax, [bx+win.h]
    mov [wh], ax
    WRECT   0,   0,   0,   0, C_BLACK
    WRECT   1,   1,  -2,  -2, C_LGRAY
    WRECT   4,   4,  -8,  -8, C_BLACK
    WRECT  23,   0,   1,   5, C_BLACK
    WRECT -24,   0,   1,   5, C_BLACK
    WRECT  23,  -5,   1,   5, C_BLACK
    WRECT -24,  -5,   1,   5, C_BLACK
    WRECT   0,  23,   5,   1, C_BLACK
    WRECT  -5,  23,   5,   1, C_BLACK
    WRECT   0, -24,   5,   1, C_BLACK
    WRECT  -5, -24,   5,   1, C_BLACK
    WRECT   5,   5, -10,  18, C_BLUE
    WRECT   5,  24, -10, -29, C_WHITE
    WRECT   5,   5,  18,  18, C_LGRAY  ; control-menu box
    WRECT  23,   5,   1,  18, C_BLACK
    WRECT   8,  12,  13,   4, C_BLACK
    WRECT   9,  13,  11,   2, C_WHITE
    mov di, [cur_win]
    test byte [di+win.flags], WF_CLOSE
    jz .no_close
    WRECT -24,   5,   1,  18, C_BLACK  ; close box
    WRECT -23,   5,  18,  18, C_LGRAY
    WRECT -23,   5,  17,   1, C_WHITE
    WRECT -23,   5,   1,  17, C_WHITE
    WRECT -23,  22,  18,   1, C_DGRAY
    WRECT  -6,   5,   1,  18, C_DGRAY
    mov ax, [wx]
    add ax, [ww]
    sub ax, 18
    mov bx, [wy]
    add bx, 6
    mov cl, C_BLACK
    mov si, close_glyph
    call draw_glyph
.no_close:
    mov di, [cur_win]
    mov si, [di+win.title]
    call strlen
    shl cx, 3
    mov ax, [ww]
    sub ax, cx
    shr ax, 1
    add ax, [wx]
    mov bx, [wy]
    add bx, 6
    mov cl, C_WHITE
    call draw_text
    mov di, [cur_win]
    cmp word [di+win.menu], 0
    je .no_menu
    WRECT   5,  42, -10,   1, C_BLACK
    mov di, [cur_win]
    mov si, [di+win.menu]
    mov ax, [wx]
    add ax, 13
    mov bx, [wy]
    add bx, 25
    mov cl, C_BLACK
    call draw_text
    call strlen
    add si, cx
    inc si                             ; the underline text follows
    call draw_text
.no_menu:
    mov di, [cur_win]
    mov ax, [di+win.draw]
    test ax, ax
    jz .done
    call ax
.done:
    popa
    ret

; draw_button: AX = x, BX = y, CX = w, DX = h, SI = label. Raised grey
; push button with rounded corners, as in Windows 3.1.
draw_button:
    pusha
    mov [bt_x], ax
    mov [bt_y], bx
    mov [bt_w], cx
    mov [bt_h], dx
    push si
    inc ax
    sub cx, 2
    mov si, C_BLACK
    mov dx, 1
    call fill_rect                     ; top edge
    add bx, [bt_h]
    dec bx
    call fill_rect                     ; bottom edge
    mov ax, [bt_x]
    mov bx, [bt_y]
    inc bx
    mov cx, 1
    mov dx, [bt_h]
    sub dx, 2
    call fill_rect                     ; left edge
    add ax, [bt_w]
    dec ax
    call fill_rect                     ; right edge
    mov ax, [bt_x]
    inc ax
    mov cx, [bt_w]
    sub cx, 2
    mov si, C_LGRAY
    call fill_rect                     ; face
    mov si, C_DGRAY
    mov bx, [bt_y]
    add bx, [bt_h]
    sub bx, 3
    mov dx, 2
    call fill_rect                     ; bottom shadow
    mov ax, [bt_x]
    add ax, [bt_w]
    sub ax, 3
    mov bx, [bt_y]
    inc bx
    mov cx, 2
    mov dx, [bt_h]
    sub dx, 2
    call fill_rect                     ; right shadow
    mov si, C_WHITE
    mov ax, [bt_x]
    inc ax
    mov cx, [bt_w]
    sub cx, 4
    mov dx, 2
    call fill_rect                     ; top highlight
    mov cx, 2
    mov dx, [bt_h]
    sub dx, 4
    call fill_rect                     ; left highlight
    pop si
    call strlen
    shl cx, 3
    mov ax, [bt_w]
    sub ax, cx
    shr ax, 1
    add ax, [bt_x]
    mov bx, [bt_h]
    sub bx, 16
    shr bx, 1
    add bx, [bt_y]
    mov cl, C_BLACK
    call draw_text
    popa
    ret

; on_click: AX, BX = screen position of a left button press.
on_click:
    pusha
    mov di, windows
    mov cx, NUM_WINDOWS
.l:
    test byte [di+win.flags], WF_OPEN
    jz .n
    mov si, ax
    sub si, [di+win.x]
    cmp si, [di+win.w]
    jae .n                             ; (negative offsets are large unsigned)
    mov dx, bx
    sub dx, [di+win.y]
    cmp dx, [di+win.h]
    jae .n
    test byte [di+win.flags], WF_CLOSE
    jz .content
    mov bp, [di+win.w]
    sub bp, 23
    cmp si, bp
    jb .content
    add bp, 18
    cmp si, bp
    jae .content
    cmp dx, 5
    jb .content
    cmp dx, 23
    jae .content
    mov bx, di
    call close_window
    jmp .done
.content:
    mov bp, [di+win.click]
    test bp, bp
    jz .done
    mov ax, [di+win.x]
    mov [wx], ax
    mov ax, [di+win.y]
    mov [wy], ax
    mov ax, si
    mov bx, dx
    call bp
    jmp .done
.n:
    add di, win_size
    loop .l
.done:
    popa
    ret

; --- Program Manager --------------------------------------------------------

ICON_Y equ 78

progman_draw:
    WTEXT 16, 50, str_portal_demo, C_BLACK
    mov word [ix], 40
    call .icon_pos
    call icon_notepad
    mov word [ix], 136
    call .icon_pos
    call icon_clock
    mov word [ix], 232
    call .icon_pos
    call icon_about
    WTEXT  28, ICON_Y + 36, str_notepad_lbl, C_BLACK
    WTEXT 132, ICON_Y + 36, str_clock_lbl, C_BLACK
    WTEXT 228, ICON_Y + 36, str_about_lbl, C_BLACK
    WTEXT  16, 160, str_pm_hint, C_DGRAY
    WTEXT  16, 176, str_pm_sound, C_DGRAY
    ret
.icon_pos:                             ; [ix] = x offset -> screen position
    mov ax, [wx]
    add [ix], ax
    mov ax, [wy]
    add ax, ICON_Y
    mov [iy], ax
    ret

progman_click:
    HIT  24, ICON_Y - 4, 64, 60, .notepad
    HIT 120, ICON_Y - 4, 64, 60, .clock
    HIT 216, ICON_Y - 4, 64, 60, .about
    ret
.notepad:
    mov bx, win_notepad
    jmp open_window
.clock:
    mov bx, win_clock
    jmp open_window
.about:
    mov bx, win_about
    jmp open_window

icon_notepad:
    IRECT  5,  1, 22, 30, C_BLACK
    IRECT  6,  2, 20, 28, C_WHITE
    IRECT  6,  2, 20,  5, C_LBLUE
    IRECT  6,  7, 20,  1, C_BLACK
    IRECT  9,  0,  2,  5, C_BLACK
    IRECT 15,  0,  2,  5, C_BLACK
    IRECT 21,  0,  2,  5, C_BLACK
    IRECT  9, 11, 14,  1, C_DGRAY
    IRECT  9, 15, 14,  1, C_DGRAY
    IRECT  9, 19, 14,  1, C_DGRAY
    IRECT  9, 23, 14,  1, C_DGRAY
    IRECT  9, 27,  9,  1, C_DGRAY
    ret

icon_clock:
    IRECT  2,  2, 28, 28, C_BLACK
    IRECT  3,  3, 26, 26, C_LGRAY
    IRECT  5,  5, 22, 22, C_BLACK
    IRECT  6,  6, 20, 20, C_WHITE
    IRECT  5,  5,  2,  2, C_LGRAY      ; round the corners a little
    IRECT 25,  5,  2,  2, C_LGRAY
    IRECT  5, 25,  2,  2, C_LGRAY
    IRECT 25, 25,  2,  2, C_LGRAY
    IRECT  6,  6,  2,  2, C_BLACK
    IRECT 24,  6,  2,  2, C_BLACK
    IRECT  6, 24,  2,  2, C_BLACK
    IRECT 24, 24,  2,  2, C_BLACK
    IRECT 15,  7,  2,  3, C_BLACK      ; 12, 6, 9 and 3 o'clock
    IRECT 15, 22,  2,  3, C_BLACK
    IRECT  7, 15,  3,  2, C_BLACK
    IRECT 22, 15,  3,  2, C_BLACK
    IRECT 15, 10,  2,  7, C_BLACK      ; hands
    IRECT 15, 15,  6,  2, C_BLUE
    ret

icon_about:
    IRECT  2,  2, 28, 28, C_BLACK
    IRECT  3,  3, 26, 26, C_BLUE
    IRECT  3,  3, 26,  1, C_LBLUE
    IRECT  3,  3,  1, 26, C_LBLUE
    mov ax, [ix]
    add ax, 12
    mov bx, [iy]
    add bx, 8
    mov si, str_i
    mov cl, C_WHITE
    call draw_text
    inc ax                             ; twice, one pixel apart: bold
    call draw_text
    ret

; --- About ------------------------------------------------------------------

about_draw:
    WTEXT  16,  34, str_ab1, C_BLACK
    WTEXT  17,  34, str_ab1, C_BLACK
    WTEXT  16,  52, str_ab2, C_BLACK
    WTEXT   8,  78, str_ab3, C_BLACK
    WTEXT   8,  94, str_ab4, C_BLACK
    WTEXT   8, 110, str_ab5, C_BLACK
    mov si, str_ptr_none
    cmp byte [mouse_mode], MOUSE_VMWARE
    jne .not_vm
    mov si, str_ptr_vmware
.not_vm:
    cmp byte [mouse_mode], MOUSE_PS2
    jne .not_ps2
    mov si, str_ptr_ps2
.not_ps2:
    WTEXT   8, 134, si, C_DGRAY
    mov ax, [wx]
    add ax, 62
    mov bx, [wy]
    add bx, 162
    mov cx, 60
    mov dx, 24
    mov si, str_ok
    call draw_button
    ret

about_click:
    HIT 62, 162, 60, 24, .ok
    ret
.ok:
    mov bx, win_about
    jmp close_window

; --- Texts ------------------------------------------------------------------

str_progman:     db "Program Manager", 0
str_clock:       db "Clock", 0
str_notepad:     db "Notepad - NOTES.TXT", 0
str_about:       db "About", 0
menu_progman:    db "File  Options  Window  Help", 0
                 db "_     _        _       _", 0
menu_notepad:    db "File  Edit  Search  Help", 0
                 db "_     _     _       _", 0
menu_clock:      db "Settings", 0
                 db "_", 0
str_portal_demo: db "Portal demo - type something", 0
str_pm_hint:     db "Click an icon to open it.", 0
str_pm_sound:    db "F5: PC speaker tune  F6: AdLib tune", 0
str_notepad_lbl: db "Notepad", 0
str_clock_lbl:   db "Clock", 0
str_about_lbl:   db "About", 0
str_i:           db "i", 0
str_ok:          db "OK", 0
str_ab1:         db "Portal Desktop", 0
str_ab2:         db "Demo exhibit 1.0", 0
str_ab3:         db "A free stand-in for", 0
str_ab4:         db "the Windows 3.1 look.", 0
str_ab5:         db "No Microsoft code.", 0
str_ptr_vmware:  db "Pointer: VMware abs.", 0
str_ptr_ps2:     db "Pointer: PS/2 mouse", 0
str_ptr_none:    db "Pointer: none", 0

close_glyph:
    db 0, 0, 0, 0
    db 11000011b
    db 01100110b
    db 00111100b
    db 00011000b
    db 00111100b
    db 01100110b
    db 11000011b
    db 0, 0, 0, 0, 0
