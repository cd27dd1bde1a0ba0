"""A sweep skips only invalid grid points; any other error fails it and names the job that failed."""

from tests.smoke.test_train_pipeline import train


def test_a_real_error_fails_the_sweep_even_with_skip_invalid_and_names_the_job(tmp_path, fixture_data_dir):
    r = train(
        tmp_path,
        fixture_data_dir,
        "task=arc_e",
        "method=base",
        "stages=eval,bogus",
        "skip_invalid=true",
        multirun=True,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: job #1 (" in r.stderr and "stages=bogus" in r.stderr
    assert "stages: unknown stage 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr
