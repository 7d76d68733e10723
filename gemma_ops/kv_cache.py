"""Preallocated per-slot KV cache.

Each of ``max_slots`` slots holds one running sequence. Global layers keep ``max_context`` positions; sliding-window
layers keep only their window as a ring (position ``p`` lives at index ``p % window``), so long prompts cost them no
more memory than short ones. The scheduler keeps its running requests in slots ``0 .. n_active-1`` (it moves the
last one into a freed slot), so decoding reads plain views of the cache instead of gathering slots.
"""

from __future__ import annotations

import torch

from gemma_ops.config import SLIDING, GemmaConfig


class KVCache:
    def __init__(
        self,
        config: GemmaConfig,
        max_slots: int,
        max_context: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.max_slots = max_slots
        self.max_context = max_context
        self.window: list[int | None] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer_type in config.layer_types:
            window = config.sliding_window if layer_type == SLIDING else None
            capacity = min(window, max_context) if window else max_context
            # [slots, kv_heads, capacity, head_dim]
            shape = (max_slots, config.num_kv_heads, capacity, config.head_dim)
            self.window.append(window)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))

    @staticmethod
    def bytes_needed(config: GemmaConfig, max_slots: int, max_context: int, dtype_bytes: int = 2) -> int:
        """Memory the cache will take, for sizing slots and context before allocating."""
        per_slot = 0
        for layer_type in config.layer_types:
            window = config.sliding_window if layer_type == SLIDING else None
            capacity = min(window, max_context) if window else max_context
            per_slot += 2 * config.num_kv_heads * capacity * config.head_dim * dtype_bytes
        return per_slot * max_slots

    def capacity(self, layer: int) -> int:
        return self.keys[layer].shape[2]

    def write_packed(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]
    ) -> None:
        """Store several prompts at once: k, v [S, kv_heads, L, head_dim] right-padded, prompt i's ``lengths[i]``
        positions (0 ..) going to ``slots[i]``. Padding lands past a prompt's end, where each decode step writes
        its position before any step reads it."""
        if k.shape[2] > self.capacity(layer):  # a ring layer and a prompt past its window
            self._write_ring(layer, slots, k, v, lengths)
            return
        length = k.shape[2]
        self.keys[layer][slots, :, :length] = k
        self.values[layer][slots, :, :length] = v

    def _write_ring(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]
    ) -> None:
        """write_packed for a ring layer: each prompt's last ``window`` positions p go to ring index p % window,
        all prompts in one indexed copy (no loop over prompts on the device, no read of ``slots`` on the host)."""
        window = self.capacity(layer)
        n = torch.tensor(lengths)  # [S]
        kept = n.clamp(max=window)  # [S] positions each prompt keeps
        rows = torch.repeat_interleave(torch.arange(len(lengths)), kept)  # [N] prompt of each kept position
        first = torch.repeat_interleave(torch.cumsum(kept, 0) - kept, kept)  # [N] where its prompt's run starts
        positions = (n - kept)[rows] + torch.arange(len(rows)) - first  # [N] its position in the prompt
        rows, positions = torch.stack((rows, positions)).to(k.device)  # one host-to-device copy
        index = positions % window
        self.keys[layer][slots[rows], :, index] = k[rows, :, positions]  # [N, kv_heads, head_dim]
        self.values[layer][slots[rows], :, index] = v[rows, :, positions]

    def write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store one new token per running slot: k, v [B, kv_heads, head_dim] at positions [B] (slots 0..B-1)."""
        batch = k.shape[0]
        window = self.window[layer]
        index = positions % window if window is not None else positions
        slots = torch.arange(batch, device=k.device)
        self.keys[layer][slots, :, index] = k
        self.values[layer][slots, :, index] = v

    def view(self, layer: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots 0..batch-1, first ``length`` entries: [B, kv_heads, L, head_dim] each."""
        length = min(length, self.capacity(layer))
        return self.keys[layer][:batch, :, :length], self.values[layer][:batch, :, :length]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a running sequence's entries (its first ``length`` positions) from slot src to slot dst."""
        for layer in range(len(self.keys)):
            n = min(length, self.capacity(layer))
            self.keys[layer][dst, :, :n] = self.keys[layer][src, :, :n]
            self.values[layer][dst, :, :n] = self.values[layer][src, :, :n]
