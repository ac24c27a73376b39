"""Speed benchmarks: training, serving latency, ScaNN at scale, batch scoring.

    python -m benchmarks --quick --output bench/speed      # under 10 minutes on 2 cores
    python -m benchmarks --output bench/speed              # the full run, under 60
    python -m benchmarks --only scann,serving --output bench/speed

Writes ``DIR/speed.json`` (flat keys: ``section_figure.detail``, plus ``machine.*`` and
``run.*``) and ``DIR/speed.md`` (the tables docs/speed.md shows). Each section's module documents
its keys: `benchmarks.train_speed`, `benchmarks.serving_cost`, `benchmarks.serving_speed`,
`benchmarks.scann_speed`, `benchmarks.batch_speed`. Speed figures are medians over repeats
after a warm-up, next to a baseline measured in the same run. Run it on a quiet machine: other
jobs on the same cores change every figure (``machine.load_average_1m`` records the load when
it started).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import timing

SECTIONS = ("train", "cost", "serving", "scann", "batch")


def _section(name: str, data_dir: Path, work: Path, quick: bool) -> dict:
    if name == "train":
        from benchmarks import train_speed
        return train_speed.run(data_dir, work, quick)
    if name == "cost":
        from benchmarks import serving_cost
        return serving_cost.run(data_dir, work, quick)
    if name == "serving":
        from benchmarks import serving_speed
        return serving_speed.run(data_dir, work, quick)
    if name == "scann":
        from benchmarks import scann_speed, scann_trained
        return {**scann_speed.run(quick), **scann_trained.run(quick)}
    from benchmarks import batch_speed
    return batch_speed.run(data_dir, work, quick)


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise SystemExit(f"--only {text!r}: choose from {', '.join(SECTIONS)} "
                         f"(comma-separated)")
    return names


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 10:
        return f"{value:.{max(digits, 2)}f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def table(r: dict) -> str:
    """The markdown tables of a result dict (only the sections it holds)."""
    out = [f"Machine: {r.get('machine.cpu_count')} CPUs ({r.get('machine.cpu_model')}), "
           f"{r.get('machine.memory_gb')} GB, TensorFlow {r.get('machine.tensorflow')}; "
           f"{'quick' if r.get('run.quick') else 'full'} run of {r.get('run.date')}, "
           f"{_fmt(r.get('run.seconds'), 0)} s; load average at start "
           f"{r.get('machine.load_average_1m')}.", ""]
    datasets = sorted({k.split(".")[2] for k in r if k.startswith("train_examples_per_s.")})
    if datasets:
        out += ["| training data | model | ours examples/s | TFRS tutorial recipe examples/s | "
                "ratio | peak RSS ours / tutorial (MB) |", "|---|---|---:|---:|---:|---:|"]
        for data in datasets:
            for kind in ("retrieval", "ranking"):
                key = f"{kind}.{data}"
                if f"train_examples_per_s.{key}" not in r:
                    continue
                out.append(f"| {data} ({r.get(f'train_rows.{data}', 0):,} ratings) | {kind} | "
                           f"{_fmt(r.get(f'train_examples_per_s.{key}'), 0)} | "
                           f"{_fmt(r.get(f'train_examples_per_s.{key}.tutorial'), 0)} | "
                           f"{_fmt(r.get(f'train_examples_per_s.{key}.ratio'), 2)} | "
                           f"{_fmt(r.get(f'peak_rss_mb.train.{key}'), 0)} / "
                           f"{_fmt(r.get(f'peak_rss_mb.train.{key}.tutorial'), 0)} |")
        out.append("")
    if "train_examples_per_s.retrieval.synthetic-1M-large-tables" in r:
        out += [f"10^6 ratings at batch 256, our retrieval: 10^4 users x 10^3 movies train at "
                f"{_fmt(r['train_examples_per_s.retrieval.synthetic-1M-small-tables'], 0)} "
                f"examples/s, 10^6 x 10^5 at "
                f"{_fmt(r['train_examples_per_s.retrieval.synthetic-1M-large-tables'], 0)} "
                f"(slowdown {_fmt(r['train_large_tables_slowdown'], 2)}x).", ""]
    goals = sorted(k.removesuffix(".goal") for k in r if k.endswith(".goal"))
    if goals:
        out += ["| target | goal | measured | met |", "|---|---:|---:|---|"]
        for key in goals:
            out.append(f"| {r.get(f'{key}.meaning', key)} | {r[f'{key}.compare']} "
                       f"{_fmt(r[f'{key}.goal'], 2)} | {_fmt(r[key], 2)} | "
                       f"{'yes' if r[f'{key}.met'] else '**no**'} |")
        out.append("")
    batches = sorted(int(k.rsplit("batch", 1)[1]) for k in r if k.startswith("cost_ratio."))
    if batches:
        out += ["| ML-100K, brute force: the served path vs retrieval | batch | retrieval p50 ms "
                "| recommender p50 ms | recommender / retrieval | with_history (H = 50) p50 ms "
                "| with_history / recommender | unseen id with_history p50 ms | unseen id / "
                "recommender |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in batches:
            out.append(f"| retrieve 100, re-rank, top 10 | {b} | "
                       f"{_fmt(r[f'cost_p50_ms.retrieval.batch{b}'], 2)} | "
                       f"{_fmt(r[f'cost_p50_ms.recommender.batch{b}'], 2)} | "
                       f"{_fmt(r[f'cost_ratio.batch{b}'], 2)} | "
                       f"{_fmt(r.get(f'cost_p50_ms.recommender_with_history.batch{b}'), 2)} | "
                       f"{_fmt(r.get(f'cost_history_ratio.batch{b}'), 2)} | "
                       f"{_fmt(r.get(f'cost_p50_ms.recommender_new_user.batch{b}'), 2)} | "
                       f"{_fmt(r.get(f'cost_new_user_ratio.batch{b}'), 2)} |")
        memory = [k for k in r if k.startswith("cost_memory_growth_mb.users")]
        history = [k for k in r if k.startswith("cost_memory_growth_mb.history.")]
        out += ["", f"One recommender call of {memory[0].rsplit('users', 1)[1]} users grows "
                f"peak memory by {_fmt(r[memory[0]], 0)} MB"
                + (f" ({_fmt(r[history[0]], 0)} MB through with_history, H = 50)" if history
                   else "") + "; batch scoring all "
                f"{r.get('cost_batch_users')} ML-100K users: "
                f"{_fmt(r.get('cost_batch_users_per_s'), 0)} users/s."]
        if "cost_first_pass_ratio" in r:
            out[-1] += (f" In a fresh process, `python -m serving batch` reports "
                        f"{_fmt(r['cost_first_pass_users_per_s.batch'], 0)} users/s where the "
                        f"bare signature, looped 128 users a call, gives "
                        f"{_fmt(r['cost_first_pass_users_per_s.signature'], 0)} (first passes, "
                        f"loading excluded: {_fmt(r['cost_first_pass_ratio'], 2)}).")
        out.append("")
    labels = sorted({k.split(".", 2)[2].rsplit(".", 1)[0] for k in r
                     if k.startswith("serving_p50_ms.")})
    if labels:
        out += ["| exported `recommender` (retrieve 100, re-rank, top 10) | batch | p50 ms | "
                "p99 ms | signature alone p50 ms | retrieval signature p50 ms | "
                "recommender / retrieval |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label in labels:
            for batch in (1, 64):
                key = f"recommender.{label}.batch{batch}"
                retrieval = f"serving_signature_p50_ms.retrieval.{label}.batch{batch}"
                if f"serving_p50_ms.{key}" in r:
                    out.append(f"| {label} | {batch} | {_fmt(r[f'serving_p50_ms.{key}'], 2)} | "
                               f"{_fmt(r[f'serving_p99_ms.{key}'], 2)} | "
                               f"{_fmt(r.get(f'serving_signature_p50_ms.{key}'), 2)} | "
                               f"{_fmt(r.get(retrieval), 2)} | "
                               f"{_fmt(r.get(f'serving_cost_ratio.{label}.batch{batch}'), 2)} |")
        out += ["", "| closed loop, batch-1 requests | client threads | requests/s | p50 ms | "
                "p99 ms |", "|---|---:|---:|---:|---:|"]
        for key in sorted((k for k in r if k.startswith("serving_concurrent_rps.")),
                          key=lambda k: (k.rsplit(".", 1)[0], int(k.rsplit("threads", 1)[1]))):
            rest = key.split(".", 1)[1]
            label, threads = rest.rsplit(".threads", 1)
            out.append(f"| {label.removeprefix('recommender.')} | {threads} | {_fmt(r[key], 1)} | "
                       f"{_fmt(r[f'serving_concurrent_p50_ms.{rest}'], 2)} | "
                       f"{_fmt(r[f'serving_concurrent_p99_ms.{rest}'], 2)} |")
        out.append("")
    if "scann_recall_at_10" in r:
        out += [f"ScaNN on {r['scann_candidates']:,} synthetic {r['scann_dims']}-dim candidates "
                f"({r['scann_params.leaves']} leaves, {r['scann_params.leaves_to_search']} "
                f"searched, {r['scann_params.reorder']} re-scored exactly; index built in "
                f"{_fmt(r['scann_build_seconds'], 1)} s): recall@10 "
                f"**{r['scann_recall_at_10']:.4f}** against brute force. Matmul rate "
                f"{_fmt(r['matmul_gflops'], 1)} G multiply-adds/s, memory read "
                f"{_fmt(r.get('memory_read_gb_per_s'), 1)} GB/s.", "",
                "| batch | brute force ms/query | arithmetic bound ms/query | measured / bound | "
                "memory bound ms/query | ScaNN ms/query | ScaNN speed-up |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for batch in (1, 64):
            out.append(f"| {batch} | {_fmt(r[f'brute_force_ms_per_query.batch{batch}'], 3)} | "
                       f"{_fmt(r[f'brute_force_bound_ms_per_query.batch{batch}'], 3)} | "
                       f"{_fmt(r[f'brute_force_bound_ratio.batch{batch}'], 1)} | "
                       f"{_fmt(r.get(f'brute_force_memory_bound_ms_per_query.batch{batch}'), 3)} | "
                       f"{_fmt(r[f'scann_ms_per_query.batch{batch}'], 3)} | "
                       f"{_fmt(r[f'scann_speedup_vs_brute_force.batch{batch}'], 1)}x |")
        out.append("")
    if "scann_trained_recall_at_10" in r:
        out += [f"ScaNN on a trained retrieval model's {r['scann_trained_candidates']:,} "
                f"candidate embeddings ({r['scann_trained_train_examples']:,} training examples "
                f"of synthetic ratings; {r['scann_trained_params.leaves']} leaves, "
                f"{r['scann_trained_params.leaves_to_search']} searched, "
                f"{r['scann_trained_params.reorder']} re-scored exactly): recall@10 "
                f"**{r['scann_trained_recall_at_10']:.4f}** for "
                f"{r['scann_trained_queries']:,} users' queries.", "",
                "| batch | brute force ms/query | ScaNN ms/query | ScaNN speed-up |",
                "|---:|---:|---:|---:|"]
        for batch in (1, 64):
            out.append(f"| {batch} | "
                       f"{_fmt(r[f'scann_trained_brute_force_ms_per_query.batch{batch}'], 3)} | "
                       f"{_fmt(r[f'scann_trained_ms_per_query.batch{batch}'], 3)} | "
                       f"{_fmt(r[f'scann_trained_speedup_vs_brute_force.batch{batch}'], 1)}x |")
        sweep = sorted(k.split(".")[1] for k in r if k.startswith("scann_trained_sweep.")
                       and k.endswith(".recall_at_10"))
        out += ["", "| leaves searched - re-scored | recall@10 | ms/query (batch 1) |",
                "|---|---:|---:|"]
        out += [f"| {s} | {r[f'scann_trained_sweep.{s}.recall_at_10']:.4f} | "
                f"{_fmt(r[f'scann_trained_sweep.{s}.ms_per_query.batch1'], 3)} |"
                for s in sorted(sweep, key=lambda s: tuple(int(x) for x in s.split("-")))]
        out.append("")
    names = sorted({k.split(".")[1] for k in r if k.startswith("batch_users_per_s.")})
    if names:
        out += ["| batch scoring (local SavedModel, top 10) | users | users/s | one user per "
                "call users/s | ratio |", "|---|---:|---:|---:|---:|"]
        for name in names:
            out.append(f"| {name} | {r[f'batch_users.{name}']:,} | "
                       f"{_fmt(r[f'batch_users_per_s.{name}'], 0)} | "
                       f"{_fmt(r[f'batch_users_per_s.{name}.one_by_one'], 0)} | "
                       f"{_fmt(r[f'batch_users_per_s.{name}.ratio'], 1)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for speed.json and speed.md")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repeats (under 10 minutes on 2 cores)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--data-dir", default="../shared/data/ml-100k",
                        help="the extracted ml-100k folder (default: %(default)s)")
    parser.add_argument("--work-dir", help="where exports and data are written (default: a "
                        "temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    sections = _sections(args.only)
    data_dir = Path(args.data_dir)
    if not (data_dir / "u.data").is_file():
        raise SystemExit(f"--data-dir {str(data_dir)!r} has no u.data: pass the extracted "
                         f"MovieLens 100K folder")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    result = {**timing.machine(), "run.quick": args.quick, "run.sections": ",".join(sections),
              "run.date": datetime.date.today().isoformat()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="speed-", dir=args.work_dir) as tmp:
        for name in sections:
            began = time.perf_counter()
            print(f"== {name}", flush=True)
            result.update(_section(name, data_dir, Path(tmp), args.quick))
            result[f"run.seconds.{name}"] = round(time.perf_counter() - began, 1)
            result["run.seconds"] = round(time.perf_counter() - start, 1)
            # after every section, so a failure later keeps what was measured
            (output / "speed.json").write_text(json.dumps(result, indent=1, sort_keys=True)
                                               + "\n")
            print(f"== {name}: {result[f'run.seconds.{name}']:.0f} s", flush=True)
    text = table(result)
    (output / "speed.md").write_text(text + "\n")
    print(text)
    print(f"wrote {output / 'speed.json'} and {output / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
