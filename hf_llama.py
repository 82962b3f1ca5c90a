"""
Hugging Face folders both ways: export (config.json, model.safetensors, and the tokenizer: a
released tokenizer.json as it is, or one written from our .tiktoken by tokenizer.py) and import
(our state dict and ModelConfig, from safetensors and JSON only: a pickle is never read, and no
shipped code is ever run). Two layouts, with the same tensor names: Llama, for what Llama
expresses (Amber, MAP-Neo), which transformers runs as it is; and nano360's own (CrystalCoder:
LayerNorm with bias, partial rotary, biases Llama's attention_bias cannot say, muP multipliers),
which is StableLm plus what StableLm lacks, in hf_modeling.py, copied into the folder as
modeling_nano360.py and run by transformers with trust_remote_code=True. One name map serves
both ways, so they cannot drift apart. `eval.py export` and `eval.py import` are the commands;
eval.py loads a Hugging Face folder through import_llama.
"""
import math
import os
import shutil

import torch

from config import ModelConfig
from stage import DataError, write_json
from tokenizer import export_tokenizer, load_json, load_tokenizer, read_tiktoken, save_hf_tokenizer


def llama_gaps(cfg):
    """What Llama cannot express (then the nano360 layout is written), each naming its config
    key; [] for a Llama."""
    bad = [(cfg.norm == "layernorm", "norm='layernorm' (LayerNorm has a bias; Llama uses RMSNorm)"),
           (cfg.rotary_dim != cfg.head_dim,
            f"rotary_dim={cfg.rotary_dim} < head_dim={cfg.head_dim} (partial rotary)"),
           (cfg.embed_mult != 1.0, f"embed_mult={cfg.embed_mult} (muP embedding multiplier)"),
           (cfg.logit_mult != 1.0, f"logit_mult={cfg.logit_mult} (muP logit multiplier)"),
           (cfg.qk_scale_by_d, "qk_scale_by_d=True (muP 1/head_dim attention scale)"),
           (cfg.qkv_bias != cfg.attn_out_bias,
            f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias} "
            "(HF's attention_bias covers q, k, v and o together)")]
    return [msg for is_bad, msg in bad if is_bad]


def check_export(cfg):
    """llama_gaps(cfg), or ValueError for what neither layout expresses: StableLm, under the
    nano360 layout, has no head_dim of its own (it is hidden_size / num_attention_heads)."""
    gaps = llama_gaps(cfg)
    if gaps and cfg.head_dim * cfg.n_head != cfg.d_model:
        raise ValueError(f"cannot express this model as Hugging Face Llama ({'; '.join(gaps)}) nor "
                         f"in the nano360 layout (head_dim={cfg.head_dim} is not d_model / n_head "
                         f"= {cfg.d_model} / {cfg.n_head})")
    return gaps


def kinds(bias):
    return ("weight", "bias") if bias else ("weight",)


def name_map(cfg):
    """(our name, [HF names], row sizes to split ours into) for every tensor; sizes None: one
    to one."""
    q, kv, f = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.ffn_hidden
    norms = kinds(cfg.norm == "layernorm")  # LayerNorm has a bias
    m = [("embed.weight", ["model.embed_tokens.weight"], None),
         *[("norm." + s, ["model.norm." + s], None) for s in norms]]
    if not cfg.tie_embeddings:
        m.append(("lm_head.weight", ["lm_head.weight"], None))
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        for s in norms:
            m += [(b + "norm1." + s, [h + "input_layernorm." + s], None),
                  (b + "norm2." + s, [h + "post_attention_layernorm." + s], None)]
        m += [(b + "attn.qkv." + s, [h + f"self_attn.{x}_proj." + s for x in "qkv"], [q, kv, kv])
              for s in kinds(cfg.qkv_bias)]
        m += [(b + "attn.out." + s, [h + "self_attn.o_proj." + s], None)
              for s in kinds(cfg.attn_out_bias)]
        for s in kinds(cfg.ffn_bias):
            m += [(b + "mlp.up." + s, [h + "mlp.gate_proj." + s, h + "mlp.up_proj." + s], [f, f]),
                  (b + "mlp.down." + s, [h + "mlp.down_proj." + s], None)]
    return m


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("Hugging Face export/import needs safetensors: "
                          "pip install safetensors") from None
    return safetensors.torch


def save_safetensors(tensors, path):
    """tensors in path, with the mode open() gives a new file (0o666 less the umask).
    safetensors 0.8 writes a temporary file, created 0600 whatever the umask, and renames it
    (safetensors issue #782): the model alone would be unreadable to the other users of a
    shared machine, beside a readable config.json."""
    _safetensors().save_file(tensors, path, metadata={"format": "pt"})
    umask = os.umask(0)  # read it the only portable way: set it, and put it back at once
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# -----------------------------------------------------------------------------
# export and import

def export_llama(model, out_dir, tokenizer_path=None):
    """Write model (a GPT) to out_dir as a Hugging Face folder, float32: Llama where Llama
    expresses it, else the nano360 layout (its modeling file in the folder)."""
    cfg = model.cfg
    gaps = check_export(cfg)
    if cfg.d_model % cfg.n_head:  # valid Llama, but transformers 5's config validation refuses it
        print(f"note: transformers 5 will not load this: hidden_size={cfg.d_model} is not a "
              f"multiple of num_attention_heads={cfg.n_head} (transformers 4 does)")
    specials, released = {}, tokenizer_path and tokenizer_path.endswith(".json")
    if released:  # a run trained with a released tokenizer.json: that file goes along as it is
        enc = load_tokenizer(tokenizer_path)
        n, specials = enc.n_vocab, {"<|endoftext|>": enc.eot_token, "<s>": enc.prefix_token}
    elif tokenizer_path:
        ranks, pat, specials = read_tiktoken(tokenizer_path)
        n = len(ranks) + len(specials)
    if tokenizer_path and n > cfg.vocab_size:
        raise ValueError(f"tokenizer has {n} tokens, more than vocab_size={cfg.vocab_size}")
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = {}
    for ours, names, sizes in name_map(cfg):
        parts = sd.pop(ours).split(sizes) if sizes else [sd.pop(ours)]
        # own storage: safetensors wants no sharing
        tensors.update((n, p.clone().contiguous()) for n, p in zip(names, parts))
    if sd:
        raise ValueError(f"tensors with no Hugging Face name: {sorted(sd)}")
    save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"))
    eot, pad, bos = (specials.get("<|endoftext|>"), specials.get("<|pad|>"),
                     specials.get("<s>", specials.get("<|endoftext|>")))
    conf = dict(
        hidden_act="silu", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.max_seq_len,
        # rope_theta for transformers 4, rope_parameters for 5 (which also reads the former)
        rope_theta=float(cfg.rope_theta),
        rope_parameters=dict(rope_type="default", rope_theta=float(cfg.rope_theta)),
        tie_word_embeddings=cfg.tie_embeddings, mlp_bias=cfg.ffn_bias, attention_dropout=0.0,
        initializer_range=cfg.init_std,
        # bos: end-of-text, which ends every document and so begins the next (a released
        # tokenizer: its own)
        bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, torch_dtype="float32",
        dtype="float32", use_cache=True)
    if not gaps:
        conf.update(architectures=["LlamaForCausalLM"], model_type="llama", head_dim=cfg.head_dim,
                    rms_norm_eps=cfg.norm_eps, rope_scaling=None, attention_bias=cfg.qkv_bias)
    else:
        conf.update(nano360_config(cfg))
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_modeling.py"),
                        os.path.join(out_dir, "modeling_nano360.py"))
    write_json(os.path.join(out_dir, "config.json"), conf)
    gen = dict(bos_token_id=bos, eos_token_id=eot, pad_token_id=pad)
    write_json(os.path.join(out_dir, "generation_config.json"),
               {k: v for k, v in gen.items() if v is not None})
    if released:
        save_hf_tokenizer(enc, out_dir)
    elif tokenizer_path:
        export_tokenizer(ranks, pat, specials, out_dir)


def nano360_config(cfg):
    """The config.json keys of the nano360 layout beyond those it shares with Llama's: StableLm's,
    and the names hf_modeling.py gives what StableLm lacks."""
    factor = cfg.rotary_dim / cfg.head_dim
    if int(cfg.head_dim * factor) < cfg.rotary_dim:  # transformers truncates head_dim * factor,
        factor = math.nextafter(factor, 1.0)  # and 44 * (30 / 44) falls a hair short of 30
    auto = "modeling_nano360.Nano360"
    return dict(
        architectures=["Nano360ForCausalLM"], model_type="nano360",
        auto_map=dict(AutoConfig=auto + "Config", AutoModelForCausalLM=auto + "ForCausalLM"),
        partial_rotary_factor=factor,
        rope_parameters=dict(rope_type="default", rope_theta=float(cfg.rope_theta),
                             partial_rotary_factor=factor),
        norm=cfg.norm, layer_norm_eps=cfg.norm_eps, use_qkv_bias=cfg.qkv_bias,
        attn_out_bias=cfg.attn_out_bias, embed_mult=float(cfg.embed_mult),
        logit_mult=float(cfg.logit_mult), qk_scale_by_d=cfg.qk_scale_by_d,
        use_parallel_residual=False, qk_layernorm=False, hidden_dropout=0.0,
        # what training goes on with (muP's learning rate of the hidden matrices, the init);
        # transformers does not read it, and an import gives it back (--init_from)
        nano360_training={k: getattr(cfg, k) for k in TRAINING})


TRAINING = ("hidden_lr_mult", "init_std", "init_std_embed", "init_std_out", "init_truncate")
LAYOUTS = {"llama": "Llama", "nano360": "nano360"}  # model_type: what messages call it
LLAMA_KEYS = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads",
              "intermediate_size", "max_position_embeddings")


def config_from_hf(c, where="config.json"):
    """A ModelConfig from a Llama or nano360 config.json dict (read from where); refuses what our
    model cannot run."""
    kind = c.get("model_type")
    if kind not in LAYOUTS:
        raise ValueError(f"model_type={kind!r}: only 'llama' and 'nano360' (ours) can be imported")
    missing = [k for k in LLAMA_KEYS if k not in c]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} (a {LAYOUTS[kind]} config.json has "
                        f"{', '.join(LLAMA_KEYS)})")
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_scaling={c.get('rope_scaling') or rope!r}: scaled rotary "
                         "embeddings are not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={c['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    n_head = c["num_attention_heads"]
    shape = dict(
        vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], d_model=c["hidden_size"],
        n_head=n_head, n_kv_head=c.get("num_key_value_heads") or n_head,
        head_dim=c.get("head_dim") or c["hidden_size"] // n_head,
        ffn_hidden=c["intermediate_size"], max_seq_len=c["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_embeddings=c.get("tie_word_embeddings", False), ffn_bias=c.get("mlp_bias", False))
    if kind == "llama":
        bias = c.get("attention_bias", False)
        return ModelConfig(**shape, norm="rmsnorm", norm_eps=c.get("rms_norm_eps", 1e-6),
                           qkv_bias=bias, attn_out_bias=bias)
    factor = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    return ModelConfig(
        **shape, rotary_dim=round(shape["head_dim"] * factor), norm=c.get("norm", "layernorm"),
        norm_eps=c.get("layer_norm_eps", 1e-5), qkv_bias=c.get("use_qkv_bias", False),
        attn_out_bias=c.get("attn_out_bias", False), embed_mult=c.get("embed_mult", 1.0),
        logit_mult=c.get("logit_mult", 1.0), qk_scale_by_d=c.get("qk_scale_by_d", False),
        **{k: v for k, v in (c.get("nano360_training") or {}).items() if k in TRAINING})


def hf_weights(hf_dir):
    """The weight files of a Hugging Face folder: model.safetensors, or the shards its index
    names. Only safetensors: pytorch_model.bin is a pickle, and reading a pickle runs the code
    it names, so a downloaded one is never read."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    files = (sorted(set(load_json(index).get("weight_map", {}).values()))
             if os.path.exists(index) else ["model.safetensors"])
    missing = [f for f in files if not os.path.isfile(os.path.join(hf_dir, f))]
    if missing:
        pickles = sorted(f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth")))
        raise DataError(f"{os.path.join(hf_dir, missing[0])}: not there" + (
            f", only {', '.join(pickles)} (a pickle): only .safetensors weights are read, as "
            "loading a pickle runs whatever code it names (convert it to safetensors where you "
            "trust it)" if pickles else ""))
    return [os.path.join(hf_dir, f) for f in files]


def import_llama(hf_dir):
    """(state dict, ModelConfig) of the Llama or nano360 checkpoint in hf_dir (model.safetensors,
    or shards with an index), from safetensors and JSON alone: modeling_nano360.py is not run."""
    conf = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(conf):
        raise DataError(f"{conf}: not there (a Hugging Face model folder has it)")
    cfg = config_from_hf(load_json(conf), conf)
    hf, st = {}, _safetensors()
    for f in hf_weights(hf_dir):
        try:
            hf.update(st.load_file(f))
        except Exception as e:  # noqa: BLE001: SafetensorError: a header it cannot read
            raise DataError(f"{f}: not a safetensors file safetensors can read "
                            f"({' '.join(str(e).split())})") from None
    sd = {}
    for ours, names, _ in name_map(cfg):
        missing = [n for n in names if n not in hf]
        if missing:
            raise ValueError(f"{hf_dir}: checkpoint lacks {missing}")
        sd[ours] = torch.cat([hf.pop(n) for n in names]) if len(names) > 1 else hf.pop(names[0])
    hf.pop("lm_head.weight", None)  # a tied checkpoint may store the embedding twice
    # old checkpoints saved the rope buffer
    extra = [n for n in hf if "rotary_emb.inv_freq" not in n]
    if extra:
        raise ValueError(f"{hf_dir}: tensors our model has no place for: {extra[:5]}")
    return sd, cfg


def transformers_model(hf_dir):
    """hf_dir loaded by transformers (float32, eval mode) through the class of its layout:
    LlamaForCausalLM, or hf_modeling.py's Nano360ForCausalLM (this tree's, not the copy in the
    folder: nothing a downloaded folder holds is run). None when transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.disable_progress_bar()  # one line per check, not a bar per load
    if load_json(os.path.join(hf_dir, "config.json")).get("model_type") == "nano360":
        from hf_modeling import Nano360ForCausalLM as cls
    else:
        cls = transformers.LlamaForCausalLM
    return cls.from_pretrained(hf_dir, dtype=torch.float32, use_safetensors=True).eval()
