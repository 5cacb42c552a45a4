"""The run report (`build.write_report`: one self-contained HTML page from a run directory's files) and
`status.run_status` (parts done, failed and pending per stage). Submodules import only what they use, so
`curate status` does not load matplotlib."""
