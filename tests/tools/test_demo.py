"""make demo resumes its LCM run only when that run distils the current teacher."""

from tools.demo import fresh_or_resumable


def test_lcm_run_of_another_teacher_is_moved_aside_not_resumed(tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"teacher v1")
    run = fresh_or_resumable(tmp_path / "lcm", teacher)
    (run / "checkpoints").mkdir()
    assert fresh_or_resumable(tmp_path / "lcm", teacher) == run  # same teacher: kept for --resume auto
    assert (run / "checkpoints").is_dir()
    teacher.write_bytes(b"teacher v2")
    run = fresh_or_resumable(tmp_path / "lcm", teacher)
    assert not (run / "checkpoints").exists()  # fresh run dir
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("lcm.teacher-")]
    assert len(stale) == 1 and (stale[0] / "checkpoints").is_dir()  # the old run is kept, not deleted
