"""`ScaleDPConfig`: the sizes and layout of a ScaleDP expert (re-exported by `scaledp`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dexvla.schema import check_known_fields

# "project": this project's conditioning (the default for new experts); "released": the layout
# of the authors' released ScaleDP-H / ScaleDP-L, so their stage-1 weights compute as trained.
LAYOUTS = ("project", "released")


@dataclass(frozen=True)
class ScaleDPConfig:
    """Sizes of a ScaleDP expert; JSON-safe through `to_dict` / `from_dict`.

    `embodiments` maps a name to (action_dim, state_dim); each gets its own input and output
    projections. `layout` picks the conditioning:

    - "project": each embodiment's state is projected to `state_embed_dim`, concatenated with
      the condition vector, and a Linear-SiLU-Linear MLP maps that to the width; exact-erf
      GELU; the timestep sinusoid in fp32.
    - "released": the authors' released layout. `combine` (Linear(cond_dim + state_embed_dim
      -> combine_dim) - ReLU - Linear - ReLU - Linear(-> cond_dim)) then `cond_obs_emb`
      (Linear cond_dim -> width); `state_embed_dim` is the state width `combine` reads: an
      embodiment whose state has that width enters raw (as released), any other through its
      own `state_in` Linear. Tanh GELU; the sinusoid's frequency table is computed in bfloat16
      and its features rounded to bfloat16, as the released weights were trained.
    """

    depth: int
    width: int
    heads: int
    mlp_ratio: float = 4.0
    cond_dim: int = 1536
    chunk_size: int = 50
    embodiments: dict[str, tuple[int, int]] = field(default_factory=lambda: {"aloha": (14, 14)})
    state_embed_dim: int = 128
    time_freq_dim: int = 256
    dropout: float = 0.0
    layout: str = "project"
    combine_dim: int = 1024

    def __post_init__(self) -> None:
        names = ("depth", "width", "heads", "cond_dim", "chunk_size", "state_embed_dim")
        for name in (*names, "combine_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ScaleDPConfig.{name} must be a positive int, got {value!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ScaleDPConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.width % self.heads != 0:
            raise ValueError(
                f"ScaleDPConfig.width ({self.width}) must be divisible by heads ({self.heads})"
            )
        if not isinstance(self.time_freq_dim, int) or self.time_freq_dim < 2:
            raise ValueError(
                f"ScaleDPConfig.time_freq_dim must be an even int >= 2, got {self.time_freq_dim!r}"
            )
        if self.time_freq_dim % 2:
            raise ValueError(f"ScaleDPConfig.time_freq_dim must be even, got {self.time_freq_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"ScaleDPConfig.mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ScaleDPConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.embodiments:
            raise ValueError("ScaleDPConfig.embodiments must name at least one embodiment")
        embodiments: dict[str, tuple[int, int]] = {}
        for name, dims in self.embodiments.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"embodiment name must be a non-empty str without '.', got {name!r}"
                )
            if len(dims) != 2 or any(not isinstance(d, int) or d <= 0 for d in dims):
                raise ValueError(
                    f"embodiment {name!r}: expected (action_dim, state_dim) positive ints, "
                    f"got {dims!r}"
                )
            embodiments[name] = (int(dims[0]), int(dims[1]))
        # A private copy, so mutating the caller's dict cannot change a built config.
        object.__setattr__(self, "embodiments", embodiments)

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def released(self) -> bool:
        return self.layout == "released"

    def projects_state(self, embodiment: str) -> bool:
        """Whether `embodiment`'s state goes through its own `state_in` Linear (else: raw)."""
        state_dim = self.embodiments[embodiment][1]
        return not (self.released and state_dim == self.state_embed_dim)

    def check_condition(
        self, cond: tuple[int, ...], state: tuple[int, ...], embodiment: str
    ) -> None:
        """Refuse a condition (B, cond_dim) or state (B, S_e) shape this expert cannot take."""
        if embodiment not in self.embodiments:
            raise ValueError(
                f"unknown embodiment {embodiment!r}; this ScaleDP has {sorted(self.embodiments)}"
            )
        state_dim = self.embodiments[embodiment][1]
        B = cond[0] if cond else 0
        if cond != (B, self.cond_dim):
            raise ValueError(f"cond: expected ({B}, {self.cond_dim}), got {cond}")
        if state != (B, state_dim):
            raise ValueError(f"state: expected ({B}, {state_dim}) for {embodiment!r}, got {state}")

    def check_step(
        self, noisy: tuple[int, ...], timesteps: tuple[int, ...], batch: int, embodiment: str
    ) -> None:
        """Refuse a step's noisy chunk (B, Hc, A_e) or timesteps (B,) shape."""
        action_dim = self.embodiments[embodiment][0]
        if len(noisy) != 3 or noisy[-1] != action_dim:
            raise ValueError(
                f"noisy_actions: expected (B, Hc, {action_dim}) for {embodiment!r}, got {noisy}"
            )
        B, Hc = noisy[:2]
        if not 1 <= Hc <= self.chunk_size:
            raise ValueError(f"noisy_actions: expected 1 <= Hc <= {self.chunk_size}, got Hc={Hc}")
        if timesteps != (B,):
            raise ValueError(f"timesteps: expected ({B},), got {timesteps}")
        if batch != B:
            raise ValueError(f"noisy_actions: expected batch {batch} (the condition's), got {B}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        out = asdict(self)
        out["embodiments"] = {k: list(v) for k, v in self.embodiments.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScaleDPConfig:
        """Inverse of `to_dict`; unknown keys are an error, not silently dropped. A config
        saved before `layout` existed reads as the project layout."""
        check_known_fields(cls, data)
        data = dict(data)
        if "embodiments" in data:
            data["embodiments"] = {k: tuple(v) for k, v in data["embodiments"].items()}
        return cls(**data)
