"""Gemma tokenization: the checkpoint's tokenizer.json through transformers (or a bare SentencePiece model for
Kaggle-style downloads), plus Gemma's turn format. Special ids are looked up by name, never typed as numbers:
they differ between Gemma generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
# Tokens that change what the model is doing when they appear in untrusted text: the one list; untrusted
# text has them spelled out (encode(allow_special=False)) and output cleaning strips their text form.
CONTROL_TOKENS = frozenset(
    {"<bos>", "<eos>", "<pad>", "<unk>", "<mask>", START_OF_TURN, END_OF_TURN, "<start_of_image>", "<end_of_image>"}
)


class GemmaTokenizer:
    """Text <-> token ids for one checkpoint. ``encode`` adds BOS like the HF tokenizer does by default."""

    def __init__(self, backend, kind: str, has_chat_template: bool) -> None:
        self._backend = backend
        self._kind = kind  # "hf" | "sentencepiece"
        self.has_chat_template = has_chat_template
        self.bos_id = self._special_id("<bos>")
        self.eos_id = self._special_id("<eos>")
        self.end_of_turn_id = self._special_id(END_OF_TURN, required=False)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GemmaTokenizer:
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
            return cls(hf, "hf", has_chat_template=bool(getattr(hf, "chat_template", None)))
        if (path / "tokenizer.model").is_file():
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
            # Kaggle-style downloads carry no chat template; instruction-tuned ones say "-it" in their config.
            return cls(sp, "sentencepiece", has_chat_template=False)
        raise FileNotFoundError(f"{path} has neither tokenizer.json nor tokenizer.model")

    def _special_id(self, token: str, required: bool = True) -> int | None:
        if self._kind == "hf":
            token_id = self._backend.convert_tokens_to_ids(token)
            unk = self._backend.unk_token_id
            found = token_id is not None and (token_id != unk or token == "<unk>")
        else:
            token_id = self._backend.piece_to_id(token)
            found = token_id != self._backend.unk_id()
        if not found:
            if required:
                raise ValueError(f"tokenizer has no {token} token; is this a Gemma tokenizer?")
            return None
        return int(token_id)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generation: EOS and, where the vocabulary has it, <end_of_turn>."""
        return frozenset(i for i in (self.eos_id, self.end_of_turn_id) if i is not None)

    def json_text(self) -> str | None:
        """The tokenizer.json this tokenizer was loaded from, as text (None for a bare SentencePiece model)."""
        if self._kind != "hf":
            return None
        return self._backend.backend_tokenizer.to_str()

    def encode(self, text: str, add_bos: bool = True, allow_special: bool = True) -> list[int]:
        return self.encode_batch([text], add_bos=add_bos, allow_special=allow_special)[0]

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, allow_special: bool = True) -> list[list[int]]:
        """Token ids per text. ``allow_special=False`` is for untrusted text: a literal "<start_of_turn>" in a
        record is then tokenized as plain characters and cannot open a turn."""
        if self._kind == "hf":
            encoded = self._backend(list(texts), add_special_tokens=False, split_special_tokens=not allow_special)
            out = [list(ids) for ids in encoded["input_ids"]]
        else:
            out = [list(ids) for ids in self._backend.encode(list(texts))]
        if not allow_special:  # markers the vocabulary matches in raw text anyway (turns, images): spell out
            out = [self._spell_out_specials(ids) for ids in out]
        return [([self.bos_id] if add_bos else []) + ids for ids in out]

    def _piece(self, token_id: int) -> str:
        if self._kind == "hf":
            return self._backend.convert_ids_to_tokens(token_id)
        return self._backend.id_to_piece(token_id)

    def _piece_id(self, piece: str) -> int | None:
        if self._kind == "hf":
            token_id = self._backend.convert_tokens_to_ids(piece)
            return None if token_id is None or token_id == self._backend.unk_token_id else int(token_id)
        token_id = self._backend.piece_to_id(piece)
        return None if token_id == self._backend.unk_id() else token_id

    def _spell_out_specials(self, ids: list[int]) -> list[int]:
        """Replace each special piece (e.g. <start_of_turn>) by the pieces of its characters."""
        plain: list[int] = []
        for token_id in ids:
            piece = self._piece(token_id)
            if piece not in CONTROL_TOKENS:
                plain.append(token_id)
                continue
            for char in piece:
                char_id = self._piece_id(char)
                if char_id is not None:
                    plain.append(char_id)
                    continue
                byte_ids = [self._piece_id(f"<0x{byte:02X}>") for byte in char.encode("utf-8")]
                if None in byte_ids:
                    raise ValueError(f"cannot spell out {piece!r}: the vocabulary has no piece for {char!r}")
                plain.extend(byte_ids)
        return plain

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._kind == "hf":
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if not self._backend.is_control(i)]
        return self._backend.decode(list(ids))

    def chat_prompt(self, user_text: str) -> str:
        """Gemma's turn format for one user turn, ending where the model's answer starts (BOS added by encode)."""
        return f"{START_OF_TURN}user\n{user_text}{END_OF_TURN}\n{START_OF_TURN}model\n"
