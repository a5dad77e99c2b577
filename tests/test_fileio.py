"""Outputs renamed into place keep the user's umask."""

def test_published_outputs_get_the_users_umask(tmp_path):
    """Files written to a temporary name and renamed get 0644 under umask 022, not mkstemp's 0600."""
    import os
    import stat
    import tempfile

    from clci_keras.fileio import publish

    old = os.umask(0o022)
    try:
        fd, tmp = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        publish(tmp, tmp_path / "out.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.nii.gz").st_mode) == 0o644
