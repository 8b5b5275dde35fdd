"""Which test holds each FAIL row of ../shared/docs/FAULTS.md (round 2, against commit 34061c9).

``COVERED`` maps a row's ID to the test that fails on that commit and passes now, as
``"FILE::TEST"`` (a file under tests/, a test function in it; a parametrized test counts once), or
``"FILE::test_<ID>_*"`` while a row's test is being written (any test of FILE named so).
The test's name carries the ID (``test_ST14_...``; a test for two rows carries both), so
``pytest -k ST14`` runs it. ``tests/test_faults_coverage.py`` checks that every FAIL row of
FAULTS.md is listed here and that every listed test exists and is named after its ID.

A list rather than a pytest marker: one test may hold two rows (ST3b and ST3e are one signal
handler), this file can be read (and checked) without importing or collecting any test, and a
row's test is one ``grep`` away.
"""

from __future__ import annotations

COVERED: dict[str, str] = {
    # Reliability and security, round 2 (issue 30)
    "R4": "test_faults_round2.py::test_R4_resume_after_sigkill_logs_each_epoch_once_and_says_which_are_retrained",
    "S6": "test_faults_round2.py::test_S6_search_ranges_beyond_float32_are_refused_at_parse_time",
    "D23": "test_faults_round2.py::test_D23_idx_dimensions_beyond_int64_are_one_line",
    "D34": "test_faults_round2.py::test_D34_an_oversized_png_in_a_class_folder_is_one_line",
    "D51": "test_faults_round2.py::test_D51_a_50000_square_bomb_png_is_one_line",
    "D53x": "test_faults_round2.py::test_D53x_a_bomb_header_with_its_data_cut_is_one_line",
    "D57": "test_faults_round2.py::test_D57_memory_on_a_bomb_folder_is_one_line",
    "D63": "test_faults_round2.py::test_D63_cifar_batches_all_cut_alike_are_refused_against_the_format",
    "X5": "test_faults_round2.py::test_X5_a_password_in_mlflow_run_storage_param_is_masked_in_the_run",
    "X25": "test_faults_round2.py::test_X25_worker_specs_hold_no_password_and_are_removed",
    "X26": "test_faults_round2.py::test_X26_a_study_files_tracking_uri_never_replaces_the_users_nor_gets_its_credentials",
    "P4": "test_faults_round2.py::test_P4_preset_with_another_model_drops_the_presets_model_options",
    "F2b": "test_faults_round2.py::test_F2b_filters_on_a_bomb_png_is_one_line",
    "F7": "test_faults_round2.py::test_F7_filters_out_to_an_unwritable_path_is_one_line",
    # Full disks and sizes that take the machine down
    "K1": "test_faults_limits.py::test_K1_a_full_artifact_disk_fails_the_run_and_blames_the_disk",
    "K3": "test_faults_limits.py::test_K3_a_full_disk_under_the_optuna_storage_is_one_line",
    "M3b": "test_faults_limits.py::test_M3b_sizes_beyond_int64_are_refused_as_numbers",
    "M7": "test_faults_limits.py::test_M7_memory_refuses_the_calibration_above_available_memory",
    "M7b": "test_faults_limits.py::test_M7b_train_image_size_refused_before_any_allocation",
    "M8": "test_faults_limits.py::test_M8_measure_refused_above_available_memory",
    "M16": "test_faults_limits.py::test_M16_info_refuses_a_model_that_cannot_be_built",
    "F2": "test_faults_limits.py::test_F2_a_12000_pixel_square_png_is_refused_before_decoding",
    "F6": "test_faults_limits.py::test_F6_filters_size_refused_by_predicted_bytes",
    # The study layer (the campaign issue)
    "ST3b": "test_campaign_faults.py::test_ST3b_ST3e_sigterm_outside_a_cell_ends_the_parent_killed_with_no_job_running_and_the_same_command_resumes",
    "ST3e": "test_campaign_faults.py::test_ST3b_ST3e_sigterm_outside_a_cell_ends_the_parent_killed_with_no_job_running_and_the_same_command_resumes",
    "ST7h": "test_study_definition.py::test_ST7h_study_show_refuses_two_spellings_of_one_axis",
    "ST8a": "test_study_definition.py::test_ST8a_study_show_of_a_100x100x100_grid_is_refused_with_the_computed_count",
    "ST8b": "test_study_definition.py::test_ST8b_study_run_refuses_before_any_run_or_storage_exists",
    "ST9c": "test_study_definition.py::test_ST9c_ST14_study_report_refuses_a_bad_study_name_with_exit_2",
    "ST14": "test_study_definition.py::test_ST9c_ST14_study_report_refuses_a_bad_study_name_with_exit_2",
    "ST19": "test_study_definition.py::test_ST19_absurd_seeds_are_refused_as_numbers",
    "ST21": "test_campaign_faults.py::test_ST21_a_live_studys_parent_is_never_called_stale_and_mark_failed_leaves_it_running",
}
