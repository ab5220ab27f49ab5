"""The end of a caller's turn by meaning as well as silence: a transcript that stops on a
word a sentence cannot end with ("I'd like a table for ... um ...") is given longer to go
on than one that sounds finished.

No turn-detection model fits here: the published ones (livekit's turn-detector plugin, the
Smart Turn models) fetch their weights from a model hub at run time, and nothing here may
download. So this is a transcript heuristic: the last word is a filler, an article, a
preposition, a conjunction, a possessive or an auxiliary, or the text trails off with a
comma or an ellipsis. Whisper ends nearly every fragment with a full stop, so punctuation
alone cannot say a sentence is complete, and a finished-sounding transcript keeps the usual
endpointing delay (it is never shortened).
"""

from __future__ import annotations

import re

# Per language; a language without a list is never held.
DANGLING: dict[str, frozenset[str]] = {
    "en": frozenset(
        """um uh er erm hmm like a an the my your our their his her its this that these those
        some any to for of in on at with from by about into onto over under than as
        and or but so because if when while whether which who whose where
        is are was were be been am do does did have has had will would can could
        should shall may might must i'd i'll i'm we'd we'll you'd let's want wanna gonna
        need like maybe just also very really more most""".split()
    ),
}
_WORD = re.compile(r"[a-zA-Z']+")


def sounds_unfinished(text: str, language: str = "en") -> bool:
    """Does ``text`` stop where a sentence cannot end (so the caller is likely to go on)?"""
    body = text.strip()
    if not body:
        return False
    if body.endswith(("...", "…", ",", "-", "—")):
        return True
    words = _WORD.findall(body.lower())
    dangling = DANGLING.get(language.lower().split("-")[0])
    return bool(words and dangling and words[-1] in dangling)


__all__ = ["DANGLING", "sounds_unfinished"]
