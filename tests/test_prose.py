"""The repository's prose speaks to its readers: no words that only made sense to whoever tracked the work
(issue numbers, who lent which machine, a tool's parameters). Figures name the machine and the capability."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Case-insensitive; word bounds keep identifiers such as BUSY_TIMEOUT_S or tests_timeout_s out.
TRACKER_WORDS = re.compile(
    r"\bissue \d+|\(issue:|\blent\b|\bdevice tool\b|\bthis task\b|\btimeout_s\b", re.IGNORECASE
)


def prose_files() -> list[Path]:
    """What a reader of the repository reads: the README, the benchmark results and scripts, lab's modules."""
    return [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "benchmarks").glob("*.py")),
            *sorted((ROOT / "lab").glob("*.py"))]


def tracker_words(path: Path) -> list[str]:
    """``file:line: text`` for every line of ``path`` with a tracker word."""
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {line.strip()}"
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if TRACKER_WORDS.search(line)]


def test_tracker_words_are_found_and_identifiers_are_not(tmp_path):
    sample = tmp_path / "sample.md"
    sample.write_text("# Speed (issue 13)\nok\n## Language (issue: language)\nno GPU was lent to this task\n"
                      "the Device Tool's timeout_s\nBUSY_TIMEOUT_S = 60\nsizes['tests_timeout_s']\n"
                      "an issue, 2 of them\n")
    assert [hit.split(": ", 1)[0] for hit in tracker_words(sample)] == [
        f"{sample}:1", f"{sample}:3", f"{sample}:4", f"{sample}:5"]


def test_readme_results_benchmarks_and_lab_are_free_of_tracker_words():
    files = prose_files()
    assert ROOT / "benchmarks" / "device_check.py" in files and ROOT / "lab" / "provenance.py" in files
    hits = [hit for path in files for hit in tracker_words(path)]
    assert not hits, "tracker words in the repository's prose (name the capability, the machine or the date):\n" + (
        "\n".join(hits))
