"""Token layouts: where the video grid and the text tokens sit in a DiT's sequence.

Video tokens are flattened T-major, then H, then W: the order diffusers' patch embeddings
produce (``x.flatten(2)`` over ``[B, C, T, H, W]``). An image is ``T = 1``. Joint-attention
models put the text tokens before (FLUX, CogVideoX, SD3) or after (HunyuanVideo) the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

_TEXT_POSITIONS = ("first", "last")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be a positive int")
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def as_triple(name: str, value, *, minimum: int = 1) -> Tuple[int, int, int]:
    """Broadcast an int to a (T, H, W) triple and check every entry is an int >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be an int or a tuple of 3 ints")
    if isinstance(value, int):
        value = (value, value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be an int or a tuple of 3 ints") from None
    if len(items) != 3:
        raise ValueError(f"{name}={value!r} must have 3 entries (T, H, W), got {len(items)}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name}={value!r} must contain ints only, got {item!r}")
        if item < minimum:
            raise ValueError(f"{name}={value!r}: every entry must be >= {minimum}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenLayout:
    """How a self-attention sequence of length ``S = text_len + T * H * W`` is laid out.

    Args:
        grid: ``(T, H, W)`` of the video tokens after patchify (``T = 1`` for images).
        text_len: number of text tokens that take part in self-attention (joint attention);
            0 for models with cross-attention only (Wan, LTX-Video).
        text_position: ``"first"`` (text before video) or ``"last"`` (text after video).

    Text tokens are global: they attend to every token and every token attends to them.
    """

    grid: Tuple[int, int, int]
    text_len: int = 0
    text_position: str = "first"

    def __post_init__(self):
        object.__setattr__(self, "grid", as_triple("grid", self.grid))
        if isinstance(self.text_len, bool) or not isinstance(self.text_len, int):
            raise TypeError(f"text_len={self.text_len!r} must be an int >= 0")
        if self.text_len < 0:
            raise ValueError(f"text_len={self.text_len!r} must be >= 0")
        if self.text_position not in _TEXT_POSITIONS:
            raise ValueError(f"text_position={self.text_position!r} must be one of {_TEXT_POSITIONS}")
        # Canonical string, the kernels' cache key. Plain f-string formatting: layouts are
        # built inside torch.compile'd forwards, where dynamo folds it to a constant.
        t, h, w = self.grid
        object.__setattr__(self, "spec", f"{t}x{h}x{w}/{self.text_len}/{self.text_position}")

    @property
    def video_len(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def seq_len(self) -> int:
        return self.text_len + self.video_len

    @property
    def video_start(self) -> int:
        """Index of the first video token in the sequence."""
        return self.text_len if self.text_position == "first" else 0

    @property
    def text_start(self) -> int:
        """Index of the first text token in the sequence."""
        return 0 if self.text_position == "first" else self.video_len

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "text_len": self.text_len, "text_position": self.text_position}

    @classmethod
    def from_spec(cls, spec: str) -> "TokenLayout":
        """Inverse of ``layout.spec``."""
        grid, text_len, position = spec.split("/")
        return cls(tuple(int(x) for x in grid.split("x")), int(text_len), position)

    @classmethod
    def from_dict(cls, data: dict) -> "TokenLayout":
        return cls(grid=tuple(data["grid"]), text_len=data.get("text_len", 0),
                   text_position=data.get("text_position", "first"))
