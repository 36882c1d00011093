//! The full runtime (TensorFlow and Keras, `make venv-full`) behind the real `skython up`, with a
//! function's default resources: its zygote preloads them, so a worker pays only what it uses,
//! and its memory is counted by its cgroup, not by the address space TensorFlow reserves.
//! The interpreter is `$SKYTHON_PYTHON_FULL` (set by `make test`).

use serde_json::json;
use skython_e2e::Skython;

fn full_python() -> String {
    std::env::var("SKYTHON_PYTHON_FULL").unwrap_or_else(|_| {
        panic!("SKYTHON_PYTHON_FULL is not set: `make venv-full` builds the full runtime and `make test` passes it")
    })
}

const KERAS: &str = r#"
import numpy as np
import keras

def main(rows: list, epochs: int = 20):
    x = np.array(rows, dtype="float32")
    y = x.sum(axis=1)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=epochs, verbose=0)
    return {"before": first, "after": model.evaluate(x, y, verbose=0),
            "predictions": model.predict(x, verbose=0).ravel()}
"#;

#[test]
fn a_keras_model_trains_and_predicts_with_default_resources() {
    let python = full_python();
    let s = Skython::start(&["--python-full", &python]);
    s.deploy_ok("model", KERAS, json!({"runtime": "full"}));
    let rows = json!([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 0, 1], [2, 2, 2]]);
    let (status, body) = s.call("admin/model", json!({"rows": rows}));
    assert_eq!(status, 200, "{body}");
    let (before, after) = (
        body["before"].as_f64().unwrap(),
        body["after"].as_f64().unwrap(),
    );
    assert!(after < before, "training lowered the loss: {body}");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 5, "{body}");
    // Warm: the same worker serves the next call.
    let (status, body) = s.call("admin/model", json!({"rows": rows, "epochs": 1}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_full_runtime_has_tensorflow_preloaded_and_the_standard_one_does_not() {
    let python = full_python();
    let s = Skython::start(&["--python-full", &python]);
    let probe = "import sys\n\ndef main():\n    return 'tensorflow' in sys.modules\n";
    s.deploy_ok("full", probe, json!({"runtime": "full"}));
    s.deploy_ok("standard", probe, json!({}));
    assert_eq!(s.call("admin/full", json!({})), (200, json!(true)));
    assert_eq!(s.call("admin/standard", json!({})), (200, json!(false)));
}
