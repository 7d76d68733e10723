"""Record text as it goes into a prompt, and model text as it comes out into a column.

Gemma's control tokens in a record are defused once, by the tokenizer (``allow_special=False`` spells them
out, from ``gemma_ops.tokenizer.CONTROL_TOKENS``); here the record is kept between its delimiters, and model
output loses any control-token text it produced, matched from that same list.
"""

from __future__ import annotations

import re

from gemma_ops.tokenizer import CONTROL_TOKENS

WHITESPACE = re.compile(r"\s+")
# "<start_of_turn>" and friends (and "</...>" forms) written out as text by a model.
CONTROL_TOKEN_TEXT = re.compile(
    "<(/?)(" + "|".join(re.escape(token.strip("<>")) for token in sorted(CONTROL_TOKENS)) + ")>"
)


def prompt_safe(text: str) -> str:
    """Untrusted text as it goes between a prompt's triple-quote delimiters: one line, no fences.

    Collapsing whitespace keeps a record from faking the next few-shot line ("Sentiment: ..."), and the
    delimiter swap keeps it from closing its own quote early.
    """
    text = text.replace('"""', "\u201c\u201c\u201c")
    return WHITESPACE.sub(" ", text).strip()


def strip_control_token_text(text: str) -> str:
    """Model output without control-token text ("<end_of_turn>" written out)."""
    return CONTROL_TOKEN_TEXT.sub("", text)
