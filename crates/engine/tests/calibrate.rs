//! `spec::calibrate` on the embedded model: the raw measurements `lapsd calibrate` hands to the
//! core's fit, one per point of the plan, in the order the plan names them.

mod spec_common;

use lapsd_engine::spec::calibrate::{calibrate, CalibrationDrafter, CalibrationPlan};
use lapsd_engine::Model;
use spec_common::model_path;

fn tiny_plan() -> CalibrationPlan {
    CalibrationPlan {
        max_batch: 2,
        max_k: 1,
        context_tokens: (1..=16).collect(),
        prefill_lengths: vec![8, 16],
        repeats: 1,
    }
}

#[test]
fn calibration_measures_every_point_of_the_plan_in_order() {
    let target = Model::load(&model_path()).expect("loads");
    let mut progress_calls = 0;
    let measured = calibrate(
        &target,
        &CalibrationDrafter::NGram { n: 3 },
        &tiny_plan(),
        || progress_calls += 1,
    )
    .expect("calibrates");
    let points: Vec<(usize, usize)> = measured.steps.iter().map(|m| (m.batch, m.k)).collect();
    assert_eq!(points, [(1, 0), (1, 1), (2, 0), (2, 1)]);
    assert!(measured
        .steps
        .iter()
        .all(|m| m.verify_s > 0.0 && m.draft_s >= 0.0));
    let lengths: Vec<usize> = measured.prefills.iter().map(|p| p.tokens).collect();
    assert_eq!(lengths, [8, 16]);
    assert!(measured.prefills.iter().all(|p| p.prefill_s > 0.0));
    assert_eq!(progress_calls, 6, "one progress call per point");
}

#[test]
fn target_only_calibration_records_no_draft_time() {
    let target = Model::load(&model_path()).expect("loads");
    let measured =
        calibrate(&target, &CalibrationDrafter::None, &tiny_plan(), || {}).expect("calibrates");
    assert_eq!(measured.steps.len(), 4);
    assert!(measured.steps.iter().all(|m| m.draft_s == 0.0));
}

#[test]
fn self_drafted_calibration_times_the_draft_passes() {
    let target = Model::load(&model_path()).expect("loads");
    let drafter = CalibrationDrafter::Model {
        model: &target,
        n_layers: 2,
    };
    let measured = calibrate(&target, &drafter, &tiny_plan(), || {}).expect("calibrates");
    assert!(measured
        .steps
        .iter()
        .filter(|m| m.k > 0)
        .all(|m| m.draft_s > 0.0));
}
