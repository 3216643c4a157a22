"""PRX (PRXTransformer2DModel): `blocks` returning the image tokens; `attention` attends over text and image keys;
the MLP is `down_proj(mlp_act(gate_proj(x)) * up_proj(x))`, whose three projections are its units (`mlp_act` is
the tail of `gate_proj`)."""

from .spec import BlockGroup, ModelSpec, temb_indicator

SPEC = ModelSpec(
    name="prx",
    class_names=("PRXTransformer2DModel",),
    groups=(
        BlockGroup(
            "blocks", hidden_index=None, attention=("attention",), mlp=("gate_proj", "up_proj", "down_proj"),
            tails=(("gate_proj", "mlp_act"),),
        ),
    ),
    indicator=temb_indicator("temb"),
    indicator_doc="the timestep embedding `temb`",
    timestep_scale=1000.0,
)  # fmt: skip
