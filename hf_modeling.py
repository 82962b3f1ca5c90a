"""
nano360's model code for Hugging Face transformers, for the layouts Llama cannot express
(CrystalCoder's: LayerNorm with bias, partial rotary, biases on every projection, muP
multipliers). An exported folder carries this file as modeling_nano360.py (hf_llama.py copies
it there), and transformers loads it with
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True), through config.json's
auto_map. It is StableLm (LayerNorm with bias, rotary on the first partial_rotary_factor of each
head pairing dim i with i + rotary/2 as ours does, SwiGLU, q/k/v biases, sequential residual,
tied embeddings) plus what StableLm lacks, added after its own __init__: a bias on o_proj and on
the MLP, RMSNorm instead of LayerNorm, the embedding and logit multipliers, and attention scores
scaled by 1/head_dim. The weights are ours as they are: no multiplier is folded into them.
It imports transformers and torch only: nothing of nano360 runs inside transformers.
"""
import torch.nn as nn
from transformers import StableLmConfig, StableLmForCausalLM


class Nano360Config(StableLmConfig):
    model_type = "nano360"
    # what StableLm lacks, named as nano360's ModelConfig names them (mlp_bias as Llama's)
    norm: str = "layernorm"  # or "rmsnorm" (then layer_norm_eps is RMSNorm's eps)
    attn_out_bias: bool = False
    mlp_bias: bool = False
    embed_mult: float = 1.0
    logit_mult: float = 1.0
    qk_scale_by_d: bool = False  # scores scaled by 1/head_dim (muP) instead of 1/sqrt(head_dim)


class Scaled:
    # a module's output times a constant (muP's multipliers): a subclass of the module, not a
    # wrapper, so that its weight keeps its name (model.embed_tokens.weight) and its tie
    def __init__(self, *args, mult, **kwargs):
        super().__init__(*args, **kwargs)
        self.mult = mult

    def forward(self, x):
        return super().forward(x) * self.mult


class ScaledEmbedding(Scaled, nn.Embedding):
    pass


class ScaledLinear(Scaled, nn.Linear):  # the logits, scaled before any loss sees them
    pass


class Nano360ForCausalLM(StableLmForCausalLM):
    config_class = Nano360Config

    def __init__(self, config):
        super().__init__(config)
        c, d, f = config, config.hidden_size, config.intermediate_size
        self.model.embed_tokens = ScaledEmbedding(c.vocab_size, d, c.pad_token_id,
                                                  mult=c.embed_mult)
        self.lm_head = ScaledLinear(d, c.vocab_size, bias=False, mult=c.logit_mult)
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.o_proj = nn.Linear(d, d, bias=c.attn_out_bias)
            mlp.gate_proj = nn.Linear(d, f, bias=c.mlp_bias)
            mlp.up_proj = nn.Linear(d, f, bias=c.mlp_bias)
            mlp.down_proj = nn.Linear(f, d, bias=c.mlp_bias)
            # every attention implementation (eager, sdpa, flash), with a KV cache or not, is
            # handed this attribute as its `scaling`
            if c.qk_scale_by_d:
                attn.scaling = 1.0 / attn.head_dim
        if c.norm == "rmsnorm":
            for parent in [self.model, *self.model.layers]:
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.LayerNorm):
                        setattr(parent, name, nn.RMSNorm(d, eps=c.layer_norm_eps))
        self.post_init()  # again: initialise (or leave to from_pretrained) and tie the new modules
