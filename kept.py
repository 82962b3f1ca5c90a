"""
What the stages that keep or remove documents (curate.py's clean, dedup.py's dedup) write: the
kept documents and the lines of removed/ as .jsonl shards of at most shard_mb (DocWriter), counts
per source (count), and the output folder assembled from the tasks' (finish_documents).
Nothing here imports torch.
"""
import json, os

from stage import read_json, write_json


class DocWriter:
    """Documents (dicts) as .jsonl files of at most max_bytes: name_0000.jsonl,
    name_0001.jsonl, ..."""

    def __init__(self, folder, name, max_bytes):
        self.folder, self.name, self.max, self.files, self.f, self.n = (
            folder, name, max_bytes, [], None, 0)

    def write(self, doc):
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode()
        if self.f is None or self.n + len(line) > self.max and self.n:
            self.close()
            self.files.append(f"{self.name}_{len(self.files):04d}.jsonl")
            self.f, self.n = open(os.path.join(self.folder, self.files[-1]), "wb"), 0
        self.f.write(line)
        self.n += len(line)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        return self.files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def count(report, source, size, reason=None, size_out=0):
    """Count one document of source in a task's report: kept (size_out bytes), or removed for
    reason."""
    add_counts(report, source, dict(documents=1, kept=int(not reason), bytes_in=size,
                                    bytes_out=size_out, removed={reason: 1} if reason else {}))


def add_counts(report, source, r):
    s = report.setdefault(source, dict(documents=0, kept=0, bytes_in=0, bytes_out=0, removed={}))
    for key in ("documents", "kept", "bytes_in", "bytes_out"):
        s[key] += r[key]
    for why, n in r["removed"].items():
        s["removed"][why] = s["removed"].get(why, 0) + n


def finish_documents(st, tmp, phase, report, seconds):
    """The output folder of a stage that keeps or removes documents (clean, dedup), from its
    last phase's tasks: their kept shards and removed lines moved in (<task>_<part>.jsonl, in
    input order), problems.log, report.json (counts summed per source) and timing.json."""
    sources, width = {}, max(6, len(str(len(st.tasks))))

    def each_task():
        for i in range(len(st.tasks)):
            task = read_json(os.path.join(st.path(phase, i), "report.json"))
            for k, name in enumerate(task["docs"]):
                st.move(phase, i, name, os.path.join(tmp, f"{i:0{width}d}_{k:04d}.jsonl"))
            for k, name in enumerate(task["removed"]):
                st.move(phase, i, name,
                        os.path.join(tmp, "removed", f"{i:0{width}d}_{k:04d}.jsonl"))
            for source, r in task["sources"].items():
                add_counts(sources, source, r)
            yield task["problems"]
    report["problems"] = st.write_problems(tmp, each_task())
    report.update(sources=dict(sorted(sources.items())),
                  documents=sum(s["documents"] for s in sources.values()),
                  kept=sum(s["kept"] for s in sources.values()))
    write_json(os.path.join(tmp, "report.json"), report)
    for source, r in sorted(sources.items()):
        why = sorted(r["removed"].items(), key=lambda kv: (-kv[1], kv[0]))
        why = "; removed: " + ", ".join(f"{k} {v}" for k, v in why) if why else ""
        share = r["bytes_out"] / max(1, r["bytes_in"])
        print(f"{source:12s} kept {r['kept']:7,d} of {r['documents']:7,d} "
              f"({share:.0%} of bytes){why}")
    st.write_timing(tmp, sum(s["bytes_in"] for s in sources.values()), seconds)
