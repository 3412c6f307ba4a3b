"""`python -m eval [--kb PATH] [--questions PATH] [--all] [--words]`: how well the knowledge-base engine answers.

Counts what a customer lives, per question set:
  * direct:    answerable questions answered right at once;
  * resolved:  answerable questions resolved in one step (answered right, or the right entry among
    the options of a question back, one tap away);
  * wrong:     answerable questions answered at once with another entry (confidently wrong);
  * oos-ans:   out-of-scope questions answered with an entry (they must not be);
  * oos-ask:   out-of-scope questions asked back on (a tap from a person, but not a refusal);
beside retrieval recall@1 and @3, the reply time p50/p95, and the share of questions the
multilingual model was asked for. `--all` prints every bundled set, the sets the defaults were
tuned on first, then the held-out sets never tuned on, each group with its mean; then the reply
time on synthetic bases of 10 and 1,000 entries, words-sure replies apart from model replies.
`--words` ranks by words alone (KB_EMBEDDINGS=off). Exits 1 when the direct or refusal rate of a
set is under --fail-under (default 0: report only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from services.worker.engines.e5 import E5Model
from services.worker.engines.kb import KbEngine, KnowledgeBase, KnowledgeBaseError

from .harness import Latency, Report, Timing, evaluate, load_questions, rate, time_synthetic, unknown_expectations

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "eval"
DEFAULT_KB = ROOT / "shared" / "data" / "kb-sample.yaml"
DEFAULT_QUESTIONS = EVAL / "questions-sample.yaml"
TUNED, HELD_OUT = "tuned-on", "held-out"
# (name, role, base, questions) for --all. Tuned-on sets may steer the defaults; held-out sets
# never do (they were written before the engine changes they measure).
SAMPLE_EN_KB = ROOT / "shared" / "data" / "kb-sample-en.yaml"


def _pair(folder: str, stem: str) -> tuple[Path, Path]:
    """A written set's files: eval/<folder>/kb-<stem>.yaml and questions-<stem>.yaml."""
    return EVAL / folder / f"kb-{stem}.yaml", EVAL / folder / f"questions-{stem}.yaml"


BUNDLED = (
    ("sample-pt", TUNED, DEFAULT_KB, DEFAULT_QUESTIONS),
    ("sample-en", TUNED, SAMPLE_EN_KB, EVAL / "questions-sample-en.yaml"),
    ("dev-pt", TUNED, *_pair("tuning", "dev")),
    ("gym-pt", TUNED, *_pair("tuning", "gym")),
    ("shop-en", TUNED, *_pair("tuning", "shop-en")),
    # Off-topic questions only, each sharing a strong word with an entry: refusal's hard case.
    ("gym-pt-off", TUNED, EVAL / "tuning" / "kb-gym.yaml", EVAL / "tuning" / "questions-gym-offtopic.yaml"),
    ("shop-en-off", TUNED, EVAL / "tuning" / "kb-shop-en.yaml", EVAL / "tuning" / "questions-shop-en-offtopic.yaml"),
    ("sample-pt-off", TUNED, DEFAULT_KB, EVAL / "tuning" / "questions-sample-offtopic.yaml"),
    ("sample-en-off", TUNED, SAMPLE_EN_KB, EVAL / "tuning" / "questions-sample-en-offtopic.yaml"),
    ("dev-pt-off", TUNED, EVAL / "tuning" / "kb-dev.yaml", EVAL / "tuning" / "questions-dev-offtopic.yaml"),
    # Written blind to the engine, in trades it had not seen, then tuned on.
    ("pizzaria-pt", TUNED, *_pair("tuning", "restaurante")),
    ("pharmacy-pt", TUNED, *_pair("tuning", "farmacia")),
    ("fintech-en", TUNED, *_pair("tuning", "fintech")),
    # Written blind the same way for the answer / ask back / hand over round, in customers' own
    # words (never an entry's wording), then tuned on.
    ("rentals-pt", TUNED, *_pair("tuning", "imobiliaria")),
    ("airline-en", TUNED, *_pair("tuning", "airline-en")),
    # Written blind for the answer / ask back / hand over round, in customers' own words; held out
    # for one round, then their failures were read and tuned on.
    ("garage-pt", TUNED, *_pair("blind", "oficina")),
    ("coworking-en", TUNED, *_pair("blind", "coworking")),
    # Written blind the same way for the round that added answer sentences; held out for that
    # round (laundry 0.77, plumbing 0.77 resolved), then their failures were read and tuned on.
    ("laundry-pt", TUNED, *_pair("blind2", "lavanderia")),
    ("plumbing-en", TUNED, *_pair("blind2", "plumbing-hvac")),
    # Written blind (the writer read only other sets' files for their format) before the round
    # that added lending shards; held out for that round (optical 0.86, bike shop 0.77 resolved),
    # then their failures were read and tuned on.
    ("optical-pt", TUNED, *_pair("blind3", "otica")),
    ("bikeshop-en", TUNED, *_pair("blind3", "bikeshop")),
    # Written blind the same way (the writer read only the blind3 files, for their format) before
    # the round that added the pair model, then after it; held out for that round, then their
    # failures were read and tuned on (the tree model).
    ("petshop-pt", TUNED, *_pair("blind4", "petshop")),
    ("climbing-en", TUNED, *_pair("blind4", "gym-climbing")),
    ("buffet-pt", TUNED, *_pair("blind5", "buffet")),
    ("taxprep-en", TUNED, *_pair("blind5", "tax-prep")),
    # Written blind the same way (the writer read only two blind8 pairs, then the blind9 files, for
    # their format); held out for a round (resolved: languages 0.81, pest 0.79, phone repair 0.56,
    # car wash 0.79), then their failures were read and tuned on.
    ("languages-pt", TUNED, *_pair("blind9", "idiomas")),
    ("pest-en", TUNED, *_pair("blind9", "pest")),
    ("phonefix-pt", TUNED, *_pair("blind10", "celulares")),
    ("carwash-en", TUNED, *_pair("blind10", "carwash")),
    ("vet-pt", HELD_OUT, *_pair("holdout", "vet")),
    ("courses-en", HELD_OUT, *_pair("holdout", "courses")),
    ("pousada-pt", HELD_OUT, *_pair("holdout", "pousada")),
    ("carrental-en", HELD_OUT, *_pair("holdout", "carrental")),
    # Fresh held-out sets, written blind to the engine's code for issue 13.
    ("dental-pt", HELD_OUT, *_pair("fresh", "dental")),
    ("isp-en", HELD_OUT, *_pair("fresh", "isp")),
    # Written blind the same way, before this round's engine changes.
    ("driving-pt", HELD_OUT, *_pair("fresh", "autoescola")),
    ("solar-en", HELD_OUT, *_pair("fresh", "solar")),
    # Written blind the same way (the writers read only the blind3 files, for their format) before
    # the round that added the tree model; measured once before it and once after, never tuned on,
    # their failures never read.
    ("pousada2-pt", HELD_OUT, *_pair("blind6", "pousada")),
    ("solar2-en", HELD_OUT, *_pair("blind6", "solar")),
    ("florist-pt", HELD_OUT, *_pair("blind7", "floricultura")),
    ("printshop-en", HELD_OUT, *_pair("blind7", "printshop")),
    # Written blind the same way after the tree model; measured once, never tuned on, their
    # failures never read.
    ("materials-pt", HELD_OUT, *_pair("blind8", "materiais")),
    ("cleaning-en", HELD_OUT, *_pair("blind8", "cleaning")),
    # Written blind the same way (the writer read only the blind10 files, for their format);
    # measured on the engine as it is (their summary rows only), never tuned on, their failures
    # never read.
    ("swimming-pt", HELD_OUT, *_pair("blind11", "natacao")),
    ("storage-en", HELD_OUT, *_pair("blind11", "storage")),
    # Written blind the same way (the writer read only the blind11 files, for their format) while
    # the engine round that tuned on blind9 and blind10 was under way; measured on the engine as it
    # is on main (their summary rows only), never tuned on, their failures never read.
    ("tattoo-pt", HELD_OUT, *_pair("blind12", "tatuagem")),
    ("escaperoom-en", HELD_OUT, *_pair("blind12", "escape-room")),
    # Written blind the same way (the writer read only the blind12 files, for their format) after
    # the round that asks back sooner on questions that tell more; measured once on the engine as
    # it is on main (their summary rows only), never tuned on; the bakery's failures were read
    # once on 2026-12-07, and nothing was changed after them.
    ("barbershop-pt", HELD_OUT, *_pair("blind13", "barbearia")),
    ("bakery-en", HELD_OUT, *_pair("blind13", "bakery")),
    # Written blind the same way (the writers read only the blind13 files, for their format) before
    # any change of this round; measured once on the engine as it is on main (their summary rows
    # only), never tuned on, their failures never read.
    ("physio-pt", HELD_OUT, *_pair("blind14", "fisioterapia")),
    ("tickets-en", HELD_OUT, *_pair("blind14", "tickets")),
    # Written blind the same way (the writer read only the blind14 files, for their format) before
    # any change of this round; measured once on the engine as it is on main and once with a refit
    # that was left out (their summary rows only), never tuned on, their failures never read.
    ("dance-pt", HELD_OUT, *_pair("blind15", "academia-danca")),
    ("petinsurance-en", HELD_OUT, *_pair("blind15", "vet-insurance")),
    # Written blind the same way (the writer read only the blind15 files, for their format) before
    # any change of this round; measured once on the engine as it is on main (their summary rows
    # only), never tuned on, their failures never read.
    ("coffeeclub-pt", HELD_OUT, *_pair("blind16", "clube-cafe")),
    ("boatrental-en", HELD_OUT, *_pair("blind16", "boat-rental")),
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
    parser.add_argument("--words", action="store_true", help="rank by words alone (KB_EMBEDDINGS=off)")
    parser.add_argument(
        "--fail-under",
        type=float,
        default=0.0,
        metavar="RATE",
        help="exit 1 when the direct-answer or refusal rate is below RATE",
    )
    return parser


COLUMNS = ("direct", "resolved", "wrong", "oos-ans", "oos-ask", "recall@1", "recall@3", "p50 ms", "p95 ms", "model")


def _row(report: Report) -> list[float | None]:
    shares = (
        report.answered,
        report.resolved,
        report.wrong,
        report.out_of_scope_answered,
        report.out_of_scope_asked,
        report.recall(1),
        report.recall(3),
    )
    latency = Latency.of(report.ms)
    return [
        *(rate(share) if share[1] else None for share in shares),
        latency.p50_ms,
        latency.p95_ms,
        rate(report.model_share),
    ]


def _cells(values: Sequence[float | None]) -> str:
    return "".join(
        f"{'-':>9s}" if v is None else f"{v:9.3f}" if i < 7 or i == 9 else f"{v:9.2f}" for i, v in enumerate(values)
    )


def _print_report(report: Report) -> None:
    print(f"{'':14s}" + "".join(f"{c:>9s}" for c in COLUMNS))
    print(f"{'this set':14s}" + _cells(_row(report)))
    answerable, out_of_scope = report.answered[1], report.refused[1]
    print(f"({answerable} answerable questions, {out_of_scope} out of scope)")
    failures = report.failures
    print(f"\nnot resolved, or out of scope answered: {len(failures)}")
    for o in failures:
        shown = o.got if o.kind == "answer" else f"{o.kind} {list(o.offered)}" if o.offered else o.kind
        print(f"  {o.question.text!r}\n      expected {o.question.expect}, got {shown} ({o.score:.3f})")


def _print_timing(t: Timing) -> None:
    print(
        f"synthetic base of {t.entries} entries: indexed in {t.build_ms:.0f} ms;"
        f" words sure: {t.words.count} replies, p50 {t.words.p50_ms:.2f} ms, p95 {t.words.p95_ms:.2f} ms;"
        f" model asked: {t.model.count} replies, p50 {t.model.p50_ms:.2f} ms, p95 {t.model.p95_ms:.2f} ms"
    )


def _model(words: bool) -> E5Model | None:
    return None if words else E5Model()


def _print_all(model: E5Model | None) -> float:
    """One line per bundled set, grouped tuned-on / held-out with a mean each; returns the worst
    direct-answer or refusal rate seen."""
    print(f"{'set':14s}{'role':9s}{'lang':5s}" + "".join(f"{c:>9s}" for c in COLUMNS))
    worst = 1.0
    for role in (TUNED, HELD_OUT):
        rows: list[list[float | None]] = []
        for name, set_role, kb_path, questions_path in BUNDLED:
            if set_role != role:
                continue
            kb = KnowledgeBase.load(kb_path)
            report = evaluate(KbEngine(kb, model=model), load_questions(questions_path))
            rows.append(_row(report))
            for share in (report.answered, report.refused):
                if share[1]:
                    worst = min(worst, rate(share))
            print(f"{name:14s}{role:9s}{kb.language:5s}" + _cells(rows[-1]))
        means = [
            statistics.fmean(present) if (present := [v for v in column if v is not None]) else None
            for column in zip(*rows, strict=True)
        ]
        print(f"{'mean':14s}{role:9s}{'':5s}" + _cells(means) + "\n")
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = _model(args.words)
    except RuntimeError as exc:
        print(f"error: the multilingual model: {exc}", file=sys.stderr)
        return 2
    if args.all:
        worst = _print_all(model)
        for entries in (10, args.synthetic) if args.synthetic > 0 else ():
            _print_timing(time_synthetic(entries, model=model))
        return 1 if worst < args.fail_under else 0
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
    report = evaluate(KbEngine(kb, model=model), questions)
    _print_report(report)
    if args.synthetic > 0:
        _print_timing(time_synthetic(args.synthetic, model=model))
    worst = min(rate(report.answered), rate(report.refused))
    return 1 if worst < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
