"""The files that give meaning to a run's numbers: the tokenizer in tokens_dir is checked against
the sha256 its manifest recorded, a sweep's rows are keyed by the bytes of their task files, a
torn evals.jsonl line is left out, and a broken tokenizer, manifest, Hugging Face folder or
task file is one line naming the user's file (never a traceback, never a pickle read)."""
import base64, json, os, re, shutil, sys

import pytest
import torch

import data
import eval as ev
import suites
import parallel
import tasks
import tokenizer
import train
from config import ModelConfig, run_command
from helpers import ROOT, Evil, TINY, llama_tokenizer, sha, small_args, tokenize_tiny
from stage import DataError

EVALS = os.path.join(ROOT, "data", "evals")


def shas(folder):
    """{file: sha256} of every file under folder: the user's files, to check they are untouched."""
    return {os.path.relpath(os.path.join(d, f), folder): sha(os.path.join(d, f))
            for d, _, fs in os.walk(folder) for f in fs}


def one_line(main, argv, capsys, monkeypatch):
    """What `python X.py argv` prints when it fails: exactly one line, `error: ...`, status 2."""
    monkeypatch.setattr(sys, "argv", ["x.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_command(main, DataError, ValueError)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A 2-step run on its own copy of tiny_data (a test may change the copy and put it back)."""
    root = tmp_path_factory.mktemp("guard")
    shutil.copytree(tiny_data, root / "tokens")
    train.main(small_args(str(root / "tokens"), str(root / "out"), "--max_steps=2"))
    return root


# -----------------------------------------------------------------------------
# 1. the tokenizer in tokens_dir has a checksum

def swap_two_tokens(path, a=300, b=301):
    """Swap the bytes of two tokens of a .tiktoken: the same size, another tokenizer."""
    lines = open(path).read().splitlines(keepends=True)
    (ta, ra), (tb, rb) = lines[a].split(), lines[b].split()
    lines[a], lines[b] = f"{tb} {ra}\n", f"{ta} {rb}\n"
    before = os.path.getsize(path)
    open(path, "w").write("".join(lines))
    assert os.path.getsize(path) == before


def test_a_swapped_token_stops_training_and_eval_until_put_back(run, capsys, monkeypatch):
    tokens, ckpt = run / "tokens", str(run / "out" / "ckpt_0000002")
    manifest = data.load_manifest(str(tokens))
    tok = tokens / "tokenizer.tiktoken"
    assert manifest["tokenizer_sha256"] == {"tokenizer.tiktoken": sha(tok),
                                            "tokenizer.tiktoken.json": sha(str(tok) + ".json")}
    original = open(tok, "rb").read()
    swap_two_tokens(tok)
    try:
        kept = shas(tokens)
        want = (f"{tok} has sha256 {sha(tok)[:12]}..., {tokens}/manifest.json recorded "
                f"{manifest['tokenizer_sha256']['tokenizer.tiktoken'][:12]}...: the token shards "
                "were made with another tokenizer")
        with pytest.raises(DataError) as e:
            tokenizer.tokenizer_of(str(tokens), manifest)
        assert str(e.value) == want
        # resuming and evaluating: one line each, the file named, nothing computed
        err = one_line(train.main, small_args(str(tokens), str(run / "out"), "--max_steps=3"),
                       capsys, monkeypatch)
        assert err == f"error: {want}\n"
        sweep = [ckpt, f"--tasks={EVALS}", "--shots=0", "--seqs=2"]
        assert one_line(ev.main, sweep, capsys, monkeypatch) == f"error: {want}\n"
        assert not os.path.exists(run / "out" / "evals.jsonl")
        assert shas(tokens) == kept  # the user's files as they were
    finally:
        open(tok, "wb").write(original)
    assert ev.load(ckpt)[2].n_vocab == manifest["n_vocab"]  # the right one back: it loads


@pytest.mark.parametrize("change", ["sidecar edited", "sidecar removed", "sidecar added"])
def test_the_tokenizer_sidecar_is_checked_too(tiny_data, tmp_path, change):
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_data, tokens)
    manifest = data.load_manifest(str(tokens), hash_shards=False)
    side = tokens / "tokenizer.tiktoken.json"
    if change == "sidecar edited":  # the same tokens, another split pattern: other token ids
        json.dump({**json.load(open(side)), "pat_str": tokenizer.SPLIT_PATTERN.replace(
            r"\p{N}|", r"\p{N}{1,3}|")}, open(side, "w"))
        match = rf"{side} has sha256 \w+\.\.\., {tokens}/manifest.json recorded \w+\.\.\."
    elif change == "sidecar removed":  # the defaults would be read instead: silently wrong
        os.remove(side)
        match = rf"{side} is missing, {tokens}/manifest.json recorded \w+\.\.\."
    else:  # a manifest that recorded no sidecar: one appearing changes the tokenizer too
        manifest["tokenizer_sha256"].pop("tokenizer.tiktoken.json")
        match = rf"{side} has sha256 \w+\.\.\., {tokens}/manifest.json recorded no such file"
    with pytest.raises(DataError, match=match + ": the token shards were made with another"):
        tokenizer.tokenizer_of(str(tokens), manifest)


def test_a_manifest_from_before_the_checksum_still_loads(tiny_data, tmp_path, capsys):
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_data, tokens)
    m = json.load(open(tokens / "manifest.json"))
    del m["tokenizer_sha256"]
    json.dump(m, open(tokens / "manifest.json", "w"))
    swap_two_tokens(tokens / "tokenizer.tiktoken")  # nothing recorded: nothing to compare
    capsys.readouterr()
    enc = tokenizer.tokenizer_of(str(tokens), data.load_manifest(str(tokens)))
    assert enc.n_vocab == m["n_vocab"] and capsys.readouterr() == ("", "")


def test_a_checkpoint_s_recorded_tokenizer_is_compared(tiny_data):
    # what a checkpoint records (meta["tokenizer_sha256"], the manifest's): train.py and eval.py
    manifest = data.load_manifest(tiny_data, hash_shards=False)
    recorded = dict(manifest["tokenizer_sha256"])
    tokenizer.check_tokenizer(tiny_data, manifest, recorded, "out/x/ckpt_0000100")
    tokenizer.check_tokenizer(tiny_data, manifest, None, "out/x/ckpt_0000100")  # an older one
    recorded["tokenizer.tiktoken"] = "0" * 64
    with pytest.raises(DataError, match=rf"out/x/ckpt_0000100 was trained with another tokenizer "
                       rf"than {tiny_data}'s: tokenizer.tiktoken had sha256 000000000000\.\.\., "
                       rf"{tiny_data}/manifest.json records \w{{12}}\.\.\."):
        tokenizer.check_tokenizer(tiny_data, manifest, recorded, "out/x/ckpt_0000100")


def test_a_released_tokenizer_s_files_are_recorded_and_checked(tmp_path):
    pytest.importorskip("tokenizers")
    src = llama_tokenizer(str(tmp_path / "llama"))
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(os.path.join(TINY, "zh.jsonl"), docs)
    tokens = tmp_path / "tokens"
    manifest = tokenize_tiny(str(tokens), docs=docs, tokenizer=src)
    assert sorted(manifest["tokenizer_sha256"]) == ["tokenizer.json", "tokenizer_config.json"]
    json.dump(dict(eos_token="<unk>"), open(tokens / "tokenizer_config.json", "w"))  # other eos
    with pytest.raises(DataError, match=rf"{tokens}/tokenizer_config.json has sha256 .*: the "
                       "token shards were made with another tokenizer"):
        tokenizer.tokenizer_of(str(tokens), manifest)


# -----------------------------------------------------------------------------
# 2-3. a sweep's rows are keyed by their task files' bytes; a torn line is left out

def test_the_same_file_names_with_other_items_are_evaluated(run, tmp_path, capsys):
    ckpt, log = str(run / "out" / "ckpt_0000002"), run / "out" / "evals.jsonl"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(os.path.join(EVALS, "mmlu.jsonl"), a)
    items = [json.loads(line) for line in open(a / "mmlu.jsonl")]
    with open(b / "mmlu.jsonl", "w") as f:  # the same name, the answers moved along
        f.writelines(json.dumps({**it, "answer": (it["answer"] + 1) % 4}) + "\n" for it in items)
    try:
        rows_a = ev.sweep(ckpt, str(a), shots=0, seqs=2)
        assert rows_a[0]["task_sha256"] == {"mmlu.jsonl": sha(a / "mmlu.jsonl")}
        # a sweep killed mid-write leaves a torn last line: left out, said, and not in the way
        with open(log, "a") as f:
            f.write('{"ckpt": "ckpt_0000002", "step": 2, "loss/al')
        capsys.readouterr()
        rows_b = ev.sweep(ckpt, str(b), shots=0, seqs=2)
        assert capsys.readouterr().err.splitlines()[0] == (
            f"note: {log}: line 2 not JSON, left out (written when a sweep was killed)")
        assert rows_b[0]["task_sha256"] == {"mmlu.jsonl": sha(b / "mmlu.jsonl")}
        model, _, enc, _ = ev.load(ckpt)
        for rows, d in ((rows_a, a), (rows_b, b)):  # each row holds its own files' scores
            assert rows[0]["mmlu/acc"] == tasks.run_task(model, enc, str(d / "mmlu.jsonl"), 0)["acc"]
        # rewritten with the good rows: A's and B's, each whole on its line
        assert [json.loads(line)["task_sha256"] for line in open(log)] == [
            rows_a[0]["task_sha256"], rows_b[0]["task_sha256"]]
        # a row from before the hashes: computed again, not taken for A's
        old = [{k: v for k, v in json.loads(line).items() if k != "task_sha256"} for line in open(log)]
        open(log, "w").writelines(json.dumps(r) + "\n" for r in old)
        ev.sweep(ckpt, str(a), shots=0, seqs=2)
        assert [sorted(json.loads(line).get("task_sha256", {}).values()) for line in open(log)] == [
            [], [], [sha(a / "mmlu.jsonl")]]
        assert "task_sha256" not in open(run / "out" / "evals.csv").readline()  # not a column
    finally:
        for f in ("evals.jsonl", "evals.csv", "evals.md", "evals.png"):
            if os.path.exists(run / "out" / f):
                os.remove(run / "out" / f)


def test_the_few_shot_file_is_part_of_the_key(tmp_path):
    shutil.copy(os.path.join(EVALS, "mmlu.jsonl"), tmp_path)
    assert set(ev.task_sha256(suites.task_files(str(tmp_path)), 0)) == {"mmlu.jsonl"}
    with pytest.raises(DataError, match=rf"{tmp_path}/mmlu.dev.jsonl: not there, and "
                       rf"{tmp_path}/mmlu.jsonl is asked 1 shots from it"):
        ev.task_sha256(suites.task_files(str(tmp_path)), 1)  # a traceback (FileNotFoundError) before
    shutil.copy(tmp_path / "mmlu.jsonl", tmp_path / "mmlu.dev.jsonl")
    one = ev.task_sha256(suites.task_files(str(tmp_path)), None)  # the published 5 shots, from the dev file
    assert set(one) == {"mmlu.jsonl", "mmlu.dev.jsonl"}
    open(tmp_path / "mmlu.dev.jsonl", "a").write(open(tmp_path / "mmlu.jsonl").readline())
    assert ev.task_sha256(suites.task_files(str(tmp_path)), None) != one


def test_a_row_is_appended_on_a_line_of_its_own_after_a_torn_one(tmp_path, capsys):
    log = str(tmp_path / "evals.jsonl")
    ev.append_row(log, {"ckpt": "a", "step": 1})
    open(log, "a").write('{"ckpt": "b", "st')
    ev.append_row(log, {"ckpt": "c", "step": 3})
    assert [r["ckpt"] for r in ev.read_evals(log)] == ["a", "c"]
    assert capsys.readouterr().err == f"note: {log}: line 2 not JSON, left out (written when a sweep was killed)\n"
    ev.read_evals(log, note=False, rewrite=True)
    assert open(log).read() == '{"ckpt": "a", "step": 1}\n{"ckpt": "c", "step": 3}\n'


# -----------------------------------------------------------------------------
# 4. one line, naming the user's file

def tiktoken_lines(n=300):
    return [f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)] + [
        f"{base64.b64encode(t.encode()).decode()} {256 + i}\n"
        for i, t in enumerate(["th", "he", "in", "er", "an"][:n - 256])]


def test_a_broken_tiktoken_is_named_as_the_user_s_file_not_the_copy(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine.tiktoken"
    lines = tiktoken_lines()
    lines[3] = "not-a-token-line\n"
    open(mine, "w").writelines(lines)
    before = sha(mine)
    err = one_line(data.main, ["tokenize", os.path.join(ROOT, "config", "toy.py"), f"--tokenizer={mine}",
                               f"--docs_dir={TINY}", f"--tokens_dir={tmp_path / 'tokens'}"], capsys, monkeypatch)
    assert err == f"error: {mine}:4: expected '<base64 token> <rank>', got 'not-a-token-line'\n"
    assert ".tmp_" not in err and sha(mine) == before and not os.path.exists(tmp_path / "tokens")


@pytest.mark.parametrize("case", ["rank twice", "token twice", "rank missing", "sidecar not JSON",
                                  "sidecar pattern not a regex", "sidecar without end-of-text"])
def test_a_broken_tiktoken_or_sidecar_is_one_line(case, tmp_path):
    mine, lines, side = str(tmp_path / "mine.tiktoken"), tiktoken_lines(), None
    if case == "rank twice":  # tiktoken panics (a Rust panic, not even an Exception)
        lines[-1] = lines[-1].split()[0] + " 259\n"
        match = rf"{mine}:261: rank 259 is given twice \(line 260 too\)"
    elif case == "token twice":  # tiktoken keeps the last one, silently
        lines.append(lines[257].split()[0] + " 261\n")
        match = rf"{mine}:262: token b'he' is given twice \(line 258 too\)"
    elif case == "rank missing":  # the special tokens' ids would land on a token
        del lines[100]
        match = rf"{mine}: no rank 100: the ranks must be 0 to 259"
    elif case == "sidecar not JSON":
        side = '{"pat_str": "x",'
        match = rf"{mine}.json:1: not valid JSON \("
    elif case == "sidecar pattern not a regex":
        side = json.dumps(dict(pat_str="(unclosed", special_tokens=[tokenizer.EOT]))
        match = rf"{mine}.json: pat_str is not a pattern tiktoken can compile: .*parenthesis"
    else:
        side = json.dumps(dict(special_tokens=["<|pad|>"]))
        match = rf"{mine}.json: special_tokens is \['<\|pad\|>'\], not a list of distinct names"
    open(mine, "w").writelines(lines)
    if side is not None:
        open(mine + ".json", "w").write(side)
    before = shas(tmp_path)
    with pytest.raises(DataError, match=match):
        tokenizer.load_tokenizer(mine)
    assert shas(tmp_path) == before


@pytest.mark.parametrize("name", ["tokenizer_config.json", "config.json"])
def test_a_released_tokenizer_s_json_files_that_are_not_json(name, tmp_path):
    pytest.importorskip("tokenizers")
    folder = llama_tokenizer(str(tmp_path / "llama"))
    if name == "config.json":  # read when tokenizer_config.json does not say the eos token
        json.dump(dict(tokenizer_class="PreTrainedTokenizerFast"),
                  open(os.path.join(folder, "tokenizer_config.json"), "w"))
    open(os.path.join(folder, name), "w").write("{'eos_token': '</s>'}")
    with pytest.raises(DataError, match=rf"{folder}/{name}:1: not valid JSON \(Expecting property"):
        tokenizer.load_tokenizer(folder)


@pytest.mark.parametrize("what", ["no shards", "a shard without sha256", "not an object"])
def test_a_manifest_without_what_a_run_reads_is_one_line(what, tiny_data, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    m = json.load(open(os.path.join(tiny_data, "manifest.json")))
    if what == "no shards":
        del m["shards"]
        match = rf"{tokens}/manifest.json: no 'shards', which tokenize writes: delete {tokens} and"
    elif what == "a shard without sha256":
        del m["shards"][1]["sha256"]
        match = rf"{tokens}/manifest.json: no 'shards\[1\].sha256', which tokenize writes"
    else:
        m = [m]
        match = rf"{tokens}/manifest.json: not a JSON object \(a list\)"
    json.dump(m, open(tokens / "manifest.json", "w"))
    with pytest.raises(DataError, match=match):
        data.load_manifest(str(tokens))


@pytest.fixture
def hf_folder(tmp_path):
    """A Hugging Face Llama folder with its tokenizer.json, as eval.py reads a released model."""
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    cfg = ModelConfig(vocab_size=1024, n_layer=1, d_model=32, n_head=2, ffn_hidden=64, max_seq_len=64)
    folder = tmp_path / "hf"
    ev.export_llama(parallel.build_model(cfg, "cpu", 0), folder)
    llama_tokenizer(str(folder))
    return folder


def test_pickled_weights_are_refused_unread(hf_folder, tmp_path, capsys, monkeypatch):
    # the weights as pytorch_model.bin only: a pickle, which here would run a command if unpickled
    marker = tmp_path / "ran"
    torch.save({"w": Evil(str(marker))}, hf_folder / "pytorch_model.bin")
    os.remove(hf_folder / "model.safetensors")
    before = shas(hf_folder)
    want = (f"error: {hf_folder}/model.safetensors: not there, only pytorch_model.bin (a pickle): only "
            ".safetensors weights are read, as loading a pickle runs whatever code it names "
            "(convert it to safetensors where you trust it)\n")
    assert one_line(ev.main, ["import", str(hf_folder), str(tmp_path / "w.pt")], capsys, monkeypatch) == want
    assert one_line(ev.main, [str(hf_folder), f"--tasks={EVALS}"], capsys, monkeypatch) == want  # the sweep
    assert not marker.exists() and not (tmp_path / "w.pt").exists() and shas(hf_folder) == before


@pytest.mark.parametrize("broken", ["not JSON", "no hidden_size"])
def test_a_config_json_that_is_not_a_llama_config_is_one_line(broken, hf_folder, tmp_path, capsys, monkeypatch):
    conf = hf_folder / "config.json"
    if broken == "not JSON":
        open(conf, "w").write(open(conf).read()[:-40])
        want = rf"error: {conf}:\d+: not valid JSON \("
    else:
        c = json.load(open(conf))
        del c["hidden_size"]
        json.dump(c, open(conf, "w"))
        want = rf"error: {conf}: no hidden_size \(a Llama config.json has vocab_size, "
    before = shas(hf_folder)
    for argv in (["import", str(hf_folder), str(tmp_path / "w.pt")], [str(hf_folder), f"--tasks={EVALS}"]):
        assert re.match(want, one_line(ev.main, argv, capsys, monkeypatch))
    assert shas(hf_folder) == before and not os.path.exists(str(hf_folder) + ".evals/evals.jsonl")


@pytest.mark.parametrize("line, said", [
    ('{"question": "q", "choices": ["a", "b"], "answer": "Z"}', "answer is 'Z', not an answer mmlu can read"),
    ('{"question": "q", "choices": ["a", "b"], "answer": ""}', "answer is '', not an answer mmlu can read"),
    ('["q", ["a", "b"], 0]', "not a JSON object"),
    ('{"question": 7, "choices": ["a", "b"], "answer": 0}', "a field holds another kind of value than mmlu reads"),
], ids=["letter past the choices", "empty answer", "a list", "question a number"])
def test_a_task_line_of_another_form_is_one_line(line, said, tmp_path):
    path = tmp_path / "mmlu_x.jsonl"
    path.write_text(open(os.path.join(EVALS, "mmlu.jsonl")).readline() + line + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: {said}"):
        tasks.read_task(str(path))
