"""Model text as it comes out into a column.

Gemma's control tokens in a record are defused once, by the tokenizer (``allow_special=False`` spells them
out, from ``gemma_ops.tokenizer.CONTROL_TOKENS``); ``common.text.prompt_safe`` keeps the record between its
delimiters, and here model output loses any control-token text it produced, matched from that same list.
"""

from __future__ import annotations

import re

from gemma_ops.tokenizer import CONTROL_TOKENS

# "<start_of_turn>" and friends (and "</...>" forms) written out as text by a model.
CONTROL_TOKEN_TEXT = re.compile(
    "<(/?)(" + "|".join(re.escape(token.strip("<>")) for token in sorted(CONTROL_TOKENS)) + ")>"
)


def strip_control_token_text(text: str) -> str:
    """Model output without control-token text ("<end_of_turn>" written out)."""
    return CONTROL_TOKEN_TEXT.sub("", text)
