"""`python -m eval [--kb PATH] [--questions PATH] [--all]`: how well the knowledge-base engine answers.

Prints top-1 accuracy on answerable questions, the correct-fallback rate on unanswerable ones,
every wrong reply, the time per reply, and the time per reply on a synthetic 1,000-entry base.
`--all` prints the two rates for every bundled question set instead (the samples, the bases the
defaults were tuned on, the holdout bases never tuned on, and the development set when present).
`--embeddings` ranks with the optional sentence-embedding model too (KB_EMBEDDINGS=on).
Exits 1 when a rate is under --fail-under (default 0: report only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from services.worker.engines.kb import KbEngine, KnowledgeBase, KnowledgeBaseError

if TYPE_CHECKING:
    from services.worker.engines.embeddings import SentenceEncoder

from .harness import Report, evaluate, load_questions, rate, time_synthetic, unknown_expectations

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "eval"
DEFAULT_KB = ROOT / "shared" / "data" / "kb-sample.yaml"
DEFAULT_QUESTIONS = EVAL / "questions-sample.yaml"
DEV = ROOT.parent / "shared" / "eval"
# (name, role, base, questions) for --all.
BUNDLED = (
    ("dev", "development set", DEV / "kb-dev.yaml", DEV / "questions-dev.yaml"),
    ("sample-pt", "sample", DEFAULT_KB, DEFAULT_QUESTIONS),
    ("sample-en", "sample", ROOT / "shared" / "data" / "kb-sample-en.yaml", EVAL / "questions-sample-en.yaml"),
    ("gym-pt", "tuning", EVAL / "tuning" / "kb-gym.yaml", EVAL / "tuning" / "questions-gym.yaml"),
    ("shop-en", "tuning", EVAL / "tuning" / "kb-shop-en.yaml", EVAL / "tuning" / "questions-shop-en.yaml"),
    ("vet-pt", "holdout", EVAL / "holdout" / "kb-vet.yaml", EVAL / "holdout" / "questions-vet.yaml"),
    ("courses-en", "holdout", EVAL / "holdout" / "kb-courses.yaml", EVAL / "holdout" / "questions-courses.yaml"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, default=DEFAULT_KB, help="knowledge-base YAML file")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="question YAML file")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=1000,
        metavar="N",
        help="entries of the synthetic base timed at the end (0 to skip)",
    )
    parser.add_argument("--all", action="store_true", help="summarise every bundled question set")
    parser.add_argument("--embeddings", action="store_true", help="rank with the optional embedding model too")
    parser.add_argument(
        "--fail-under",
        type=float,
        default=0.0,
        metavar="RATE",
        help="exit 1 when accuracy or correct-fallback rate is below RATE",
    )
    return parser


def _print_report(report: Report) -> None:
    answered, refused = report.answered, report.refused
    print(f"answerable    top-1 accuracy    {rate(answered):.3f}  ({answered[0]}/{answered[1]})")
    print(f"unanswerable  correct fallback  {rate(refused):.3f}  ({refused[0]}/{refused[1]})")
    wrong = report.wrong
    print(f"\nwrong replies: {len(wrong)}")
    for o in wrong:
        best = f"  (best {o.best} {o.best_score:.3f})" if o.best and o.got != o.best else ""
        print(f"  {o.question.text!r}\n      expected {o.question.expect}, got {o.got} score {o.score:.3f}{best}")
    ms = report.ms
    print(f"\nlatency: mean {statistics.fmean(ms):.3f} ms, max {max(ms):.3f} ms per reply ({len(ms)} replies)")


def _encoder() -> SentenceEncoder:
    # Imported here: numpy and the model are an optional extra; the default install has neither.
    from services.worker.engines.embeddings import SentenceEncoder

    return SentenceEncoder.bundled()


def _print_all(encoder: SentenceEncoder | None) -> float:
    """One line per bundled set; returns the worst rate seen."""
    print(f"{'set':12s} {'role':16s} {'lang':4s} {'top-1 accuracy':>18s} {'correct fallback':>18s}")
    worst = 1.0
    for name, role, kb_path, questions_path in BUNDLED:
        if not kb_path.is_file():
            print(f"{name:12s} {role:16s} (not present: {kb_path})")
            continue
        kb = KnowledgeBase.load(kb_path)
        report = evaluate(KbEngine(kb, encoder=encoder), load_questions(questions_path))
        answered, refused = report.answered, report.refused
        worst = min(worst, rate(answered), rate(refused))
        print(
            f"{name:12s} {role:16s} {kb.language:4s}"
            f" {rate(answered):7.3f} ({answered[0]:3d}/{answered[1]:3d})"
            f" {rate(refused):7.3f} ({refused[0]:3d}/{refused[1]:3d})"
        )
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        encoder = _encoder() if args.embeddings else None
    except (ImportError, RuntimeError) as exc:
        print(f"error: --embeddings: {exc}", file=sys.stderr)
        return 2
    if args.all:
        return 1 if _print_all(encoder) < args.fail_under else 0
    try:
        kb = KnowledgeBase.load(args.kb)
        questions = load_questions(args.questions)
    except (KnowledgeBaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unknown = unknown_expectations(kb, questions)
    if unknown:
        print(f"error: {args.questions}: 'expect' names no entry of {args.kb}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    print(f"knowledge base: {args.kb} ({kb.language}, {len(kb.entries)} entries)")
    print(f"questions:      {args.questions} ({len(questions)})\n")
    engine = KbEngine(kb, encoder=encoder)
    if encoder is not None and not engine.semantic:
        print("note: the embedding model knows English only; this base is ranked by words alone\n")
    report = evaluate(engine, questions)
    _print_report(report)
    if args.synthetic > 0:
        t = time_synthetic(args.synthetic)
        print(
            f"synthetic base of {t.entries} entries: index built in {t.build_ms:.0f} ms;"
            f" mean {t.mean_ms:.3f} ms, max {t.max_ms:.3f} ms per reply ({t.replies} replies)"
        )
    worst = min(rate(report.answered), rate(report.refused))
    return 1 if worst < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
