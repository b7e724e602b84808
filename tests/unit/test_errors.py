"""The runtime's errors in the visitor's language (sessions.web.errors): the sentence
translated before its values are filled in, a visit's stored end read back in the
reader's language, and a close frame's reason cut to what the frame carries."""
from __future__ import annotations

import pytest
from django.utils import translation

from portal.language import CLOSE_REASON_MAX_BYTES, close_reason
from sessions.errors import AddressLimitError, SessionEndedError, ViewerLimitError
from sessions.machines.sandbox import MediaRefusedError
from sessions.node.keeper import END_GRACE, END_IDLE, END_TIME_LIMIT, START_FAILED, minutes
from sessions.web.errors import error_close, error_detail, stored_sentence


def test_it_keeps_the_english_sentence_with_its_values_for_logs() -> None:
    error = AddressLimitError(3, retry_after_s=60)
    assert str(error) == ("Your network already has 3 machines running or waiting, the most one network "
                          "may have at once. Please end one of them first.")
    assert error.params == {"limit": 3}


@pytest.mark.parametrize(("language", "sentence"), [
    ("en", "This machine is already shown in 4 places, the most it may be. Close one of them and try again."),
    ("de", "Diese Maschine wird bereits an 4 Stellen angezeigt, öfter geht es nicht. Schließen Sie eine "
           "davon und versuchen Sie es erneut."),
    ("fr", "Cette machine est déjà affichée à 4 endroits, le maximum. Fermez-en un et réessayez."),
    ("es", "Esta máquina ya se muestra en 4 sitios, el máximo permitido. Cierre uno y vuelva a intentarlo."),
])
def test_it_translates_an_errors_sentence_then_fills_in_its_values(language: str, sentence: str) -> None:
    with translation.override(language):
        assert error_detail(ViewerLimitError(4)) == sentence
        assert error_close(ViewerLimitError(4)) == (4429, close_reason(sentence))


def test_it_translates_a_refusal_whose_values_are_numbers() -> None:
    error = MediaRefusedError("The files take %(total)s bytes; a floppy for them holds at most %(limit)s.",
                              total=2_000_000, limit=1_457_664, code="media_too_large", status=413)
    assert error.code == "media_too_large"
    with translation.override("de"):
        assert error_detail(error) == ("Die Dateien belegen 2000000 Bytes; eine Diskette für sie fasst "
                                       "höchstens 1457664.")


def test_it_reads_a_stored_end_back_in_the_readers_language() -> None:
    with translation.override("de"):
        assert stored_sentence("The machine was switched off.") == "Die Maschine wurde ausgeschaltet."
        assert stored_sentence(END_TIME_LIMIT % {"duration": minutes(1800)}) == \
            "Der Besuch hat seine Höchstdauer von 30 Minuten erreicht."
        assert stored_sentence(END_IDLE % {"duration": minutes(60)}) == \
            "Die Maschine wurde 1 Minute lang nicht benutzt."
        assert stored_sentence(END_GRACE % {"seconds": "60"}) == "Die Seite war länger als 60 s geschlossen."
        assert stored_sentence(START_FAILED % {"reason": "The exhibit's disk image is missing."}) == \
            "Die Maschine konnte nicht starten: Das Festplattenabbild des Exponats fehlt."
    with translation.override("fr"):
        assert stored_sentence(END_IDLE % {"duration": minutes(600)}) == \
            "Personne n\u2019a utilisé la machine pendant 10 minutes."
    # A sentence no catalogue has (an operator's own words) stays as it was written.
    with translation.override("es"):
        assert stored_sentence("Closed for the night.") == "Closed for the night."
        assert stored_sentence("") == ""


def test_it_cuts_a_close_reason_to_what_a_close_frame_carries() -> None:
    long = "Übergröße " * 30
    reason = close_reason(long)
    assert len(reason.encode()) <= CLOSE_REASON_MAX_BYTES
    assert reason.endswith("…")
    assert long.startswith(reason[:-1])
    assert close_reason("Kurz.") == "Kurz."
    with translation.override("de"):
        for error in (SessionEndedError(), ViewerLimitError(4), AddressLimitError(99, retry_after_s=60)):
            assert len(error_close(error)[1].encode()) <= CLOSE_REASON_MAX_BYTES
