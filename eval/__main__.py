"""`python -m eval [--kb PATH] [--questions PATH]`: how well the knowledge-base engine answers.

Prints top-1 accuracy on answerable questions, the correct-fallback rate on unanswerable ones,
every wrong reply, the time per reply, and the time per reply on a synthetic 1,000-entry base.
Exits 1 when a rate is under --fail-under (default 0: report only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from services.worker.engines.kb import KbEngine, KnowledgeBase, KnowledgeBaseError

from .harness import Report, evaluate, load_questions, rate, time_synthetic, unknown_expectations

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KB = ROOT / "shared" / "data" / "kb-sample.yaml"
DEFAULT_QUESTIONS = ROOT / "eval" / "questions-sample.yaml"


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    report = evaluate(KbEngine(kb), questions)
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
