; sound.asm - F5 plays a short tune on the PC speaker, F6 one on the AdLib
; card (a Yamaha OPL2 at port 388h; without the card the writes go nowhere).
;
; A tune is a list of notes, three bytes each: a word for the chip (the PIT
; divisor for the speaker; F-number | block << 10 for the OPL2; 0 for a rest)
; and a length in timer ticks (55 ms); a length of 0 ends it. A key starts its
; tune at once, so the first note sounds while the key is handled; the main
; loop calls sound_tick on every tick it sees, which moves each tune on.
;
; Each tune is a voice: the address of its next note, the ticks left of the
; note that sounds, and the routine that makes its chip play a note (AX = the
; note's word, 0 for silence).

PIT_HZ          equ 1193182

%macro NOTE 2                          ; word for the chip, length in ticks
    dw %1
    db %2
%endmacro
%define SPK(hz) (PIT_HZ / (hz))
%define FM(fnum, block) ((fnum) | ((block) << 10))

struc voice
    .next   resw 1                     ; next note, or 0 when the voice is quiet
    .left   resb 1                     ; ticks left of the note that sounds
    .pad    resb 1
    .play   resw 1                     ; AX = note word -> the chip plays it
endstruc

; Ode to Joy's first line (public domain), on the speaker.
spk_tune:
    NOTE SPK(659), 2
    NOTE 0, 1
    NOTE SPK(659), 3
    NOTE SPK(698), 3
    NOTE SPK(784), 2
    NOTE 0, 1
    NOTE SPK(784), 3
    NOTE SPK(698), 3
    NOTE SPK(659), 3
    NOTE SPK(587), 3
    NOTE SPK(523), 6
    NOTE 0, 0

; Frere Jacques (traditional), on the AdLib: C D E C, C D E C, E F G.
fm_tune:
    NOTE FM(345, 4), 3
    NOTE FM(387, 4), 3
    NOTE FM(434, 4), 3
    NOTE FM(345, 4), 3
    NOTE FM(345, 4), 3
    NOTE FM(387, 4), 3
    NOTE FM(434, 4), 3
    NOTE FM(345, 4), 3
    NOTE FM(434, 4), 3
    NOTE FM(460, 4), 3
    NOTE FM(517, 4), 6
    NOTE 0, 0

; The OPL2's channel 0 as a plucked string: register, value.
fm_instrument:
    db 0x01, 0x20                      ; waveform select on
    db 0x20, 0x01                      ; modulator: frequency x1
    db 0x40, 0x18                      ; modulator level
    db 0x60, 0xF4                      ; modulator attack 15, decay 4
    db 0x80, 0x55                      ; modulator sustain 5, release 5
    db 0x23, 0x01                      ; carrier: frequency x1, decaying
    db 0x43, 0x00                      ; carrier at full level
    db 0x63, 0xF3                      ; carrier attack 15, decay 3
    db 0x83, 0x45                      ; carrier sustain 4, release 5
    db 0xC0, 0x06                      ; feedback 3, FM
fm_instrument_end:

; sound_key: AX = BIOS key. F5 and F6 start their tunes; CF set if it was one.
sound_key:
    cmp ax, 0x3F00                     ; F5
    je .speaker
    cmp ax, 0x4000                     ; F6
    je .adlib
    clc
    ret
.speaker:
    pusha
    mov bx, spk_voice
    mov word [bx+voice.next], spk_tune
    call voice_next
    popa
    stc
    ret
.adlib:
    pusha
    mov si, fm_instrument
.instrument:
    lodsw
    xchg al, ah
    call fm_write
    cmp si, fm_instrument_end
    jb .instrument
    mov bx, fm_voice
    mov word [bx+voice.next], fm_tune
    call voice_next
    popa
    stc
    ret

; sound_tick: once per timer tick the main loop sees; moves each voice on.
sound_tick:
    pusha
    mov bx, spk_voice
    call voice_tick
    mov bx, fm_voice
    call voice_tick
    popa
    ret

; voice_tick: BX = voice.
voice_tick:
    cmp word [bx+voice.next], 0
    je .done
    dec byte [bx+voice.left]
    jnz .done
    call voice_next
.done:
    ret

; voice_next: BX = voice whose next note is due: play it, or fall quiet at the end.
voice_next:
    mov si, [bx+voice.next]
    lodsw
    mov cl, [si]
    inc si
    test cl, cl
    jz .end
    mov [bx+voice.next], si
    mov [bx+voice.left], cl
    jmp [bx+voice.play]
.end:
    mov word [bx+voice.next], 0
    xor ax, ax
    jmp [bx+voice.play]

; spk_play: AX = PIT divisor for channel 2 (the speaker's), 0 for silence.
spk_play:
    test ax, ax
    jz .off
    push ax
    mov al, 0xB6                       ; channel 2, low then high byte, square wave
    out 0x43, al
    pop ax
    out 0x42, al
    mov al, ah
    out 0x42, al
    in al, 0x61
    or al, 3                           ; gate the timer to the speaker, speaker on
    out 0x61, al
    ret
.off:
    in al, 0x61
    and al, 0xFC
    out 0x61, al
    ret

; fm_play: AX = F-number | block << 10 for channel 0, 0 for silence. The key
; goes up first, so that a repeated note sounds again.
fm_play:
    push ax
    mov al, [fm_key]
    and al, 0x1F
    mov ah, 0xB0
    call fm_write
    pop ax
    test ax, ax
    jz .done
    push ax
    mov ah, 0xA0                       ; F-number, low 8 bits
    call fm_write
    pop ax
    mov al, ah                         ; block << 2 | F-number bits 8-9
    or al, 0x20                        ; key on
    mov [fm_key], al
    mov ah, 0xB0
    call fm_write
.done:
    ret

; fm_write: OPL2 register AH = AL, with the waits the chip needs after the
; register number (6 status reads) and after the value (35).
fm_write:
    pusha
    mov dx, 0x388
    xchg al, ah
    out dx, al
    mov cx, 6
.wait_register:
    in al, dx
    loop .wait_register
    inc dx
    mov al, ah
    out dx, al
    dec dx
    mov cx, 35
.wait_value:
    in al, dx
    loop .wait_value
    popa
    ret

spk_voice:
    istruc voice
        at voice.next, dw 0
        at voice.left, db 0
        at voice.pad,  db 0
        at voice.play, dw spk_play
    iend
fm_voice:
    istruc voice
        at voice.next, dw 0
        at voice.left, db 0
        at voice.pad,  db 0
        at voice.play, dw fm_play
    iend
fm_key: db 0
