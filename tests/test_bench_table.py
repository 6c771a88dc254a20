"""bench.table: the docs' tables come from one result file, with the ratio to faster-whisper's batched pipeline."""

from bench.table import server_table, systems_table


def figures(cpu_s: float, wer: float) -> dict:
    return {"cpu_s": cpu_s, "wer": wer, "x_realtime": 10.0, "p50_s": 0.5, "p95_s": 1.0}


def test_ratio_is_faster_whispers_cpu_seconds_over_the_rows():
    report = {"systems": [
        {"system": "ours-ct2-int8", "asr_short": figures(20.0, 0.08), "asr_long": figures(12.0, 0.11)},
        {"system": "fw-int8-batched8", "asr_short": figures(30.0, 0.083), "asr_long": figures(9.0, 0.113)},
    ]}
    ours, fw = (row.strip("| ").split(" | ") for row in systems_table(report)[2:])
    assert ours[4] == "1.50" and ours[9] == "0.75"
    assert fw[4] == "1.00" and fw[9] == "1.00"


def test_a_system_run_on_one_set_only_keeps_the_columns_aligned():
    report = {"systems": [{"system": "ours-ct2-int8", "asr_short": figures(20.0, 0.08)}]}
    header, _, row = systems_table(report)
    assert header.count("|") == row.count("|")


def test_server_errors_are_shown_not_dropped():
    report = {"server": {"ctranslate2-batch8": {"error": "RuntimeError: port in use"}}}
    assert "port in use" in server_table(report)[2]
