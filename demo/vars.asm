; vars.asm - RAM variables and buffers (zeroed by prog_main, not in the image).

absolute 0x0600
VARS_START:

font_off        resw 1
font_seg        resw 1

; fill_rect
fr_h            resw 1
fr_rb           resw 1
fr_lmask        resb 1
fr_rmask        resb 1
; draw_text
dt_x            resw 1
dt_row          resw 1
; draw_opaque / update_field
op_base         resw 1
op_fg           resb 1
op_bg           resb 1
op_scale        resb 1
op_width        resw 1
exp_buf         resb 4
uf_new          resw 1
uf_off          resw 1
uf_len          resw 1
; buttons and windows
bt_x            resw 1
bt_y            resw 1
bt_w            resw 1
bt_h            resw 1
wx              resw 1
wy              resw 1
ww              resw 1
wh              resw 1
cur_win         resw 1
ix              resw 1
iy              resw 1

; mouse pointer
cur_m           resb 4
cur_shown       resb 1
mouse_mode      resb 1              ; MOUSE_NONE / MOUSE_VMWARE / MOUSE_PS2
ps2_ok          resb 1
mouse_event     resb 1              ; set by the IRQ12 callback
prev_left       resb 1
ps2_buttons     resb 1
ps2_latch       resb 1
                resb 1
mouse_x         resw 1
mouse_y         resw 1
ps2_dx          resw 1
ps2_dy          resw 1
cur_saved_off   resw 1
cur_saved_rows  resw 1

; clock
last_tick       resd 1
status_tick     resd 1
status_on       resb 1
rtc_wait        resb 1
time_str        resb 8
date_str        resb 10
sh_desk_time    resb 8
sh_clk_time     resb 8
sh_clk_date     resb 10

; notepad
doc_len         resw 1
np_first        resw 1
np_status_col   resb 1
                resb 1
np_status       resb 16
sh_np_status    resb 16

absolute 0x1000
doc_buf         resb DOC_BYTES
np_shadow       resb NP_ROWS * NP_COLS
np_row          resb NP_COLS
font_ram        resb 256 * 16
text_buf        resb 16 * LINE_BYTES   ; draw_opaque's scan lines
VARS_END:

