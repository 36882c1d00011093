//! What a runner pod's zygote imports before its first worker: the modules its one function
//! imports. The local gateway preloads the whole runtime (numpy, pandas, scipy, ...) for every
//! function it may meet; a pod meets one, and each module it does not need would delay the
//! moment its port opens (≈ 0.4 s for the scientific stack), which is the cold start.

/// The top-level modules `source` imports (`import a.b as c`, `from a import b`, also inside
/// blocks), in order of appearance, without repeats. A plain text scan: a line it misreads only
/// makes a worker import that module itself.
pub fn imported_modules(source: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in source.lines() {
        let line = line.trim_start();
        let names: Vec<&str> = if let Some(rest) = line.strip_prefix("import ") {
            rest.split('#')
                .next()
                .unwrap_or_default()
                .split(',')
                .collect()
        } else if let Some(rest) = line.strip_prefix("from ") {
            match rest.split_once(" import") {
                Some((module, _)) => vec![module],
                None => continue,
            }
        } else {
            continue;
        };
        for name in names {
            let top = name.trim().split(['.', ' ']).next().unwrap_or_default();
            let valid = top
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && top.chars().all(|c| c.is_alphanumeric() || c == '_');
            if valid && !found.iter().any(|f| f == top) {
                found.push(top.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_without_imports_preloads_nothing() {
        assert!(imported_modules("def add(a, b):\n    return a + b\n").is_empty());
    }

    #[test]
    fn every_import_form_names_its_top_level_module_once() {
        let src = "import numpy as np, os.path\nfrom pandas import DataFrame\n\
                   from skython import store, load\ndef f():\n    import scipy.stats  # lazy\n    import numpy\n";
        assert_eq!(
            imported_modules(src),
            ["numpy", "os", "pandas", "skython", "scipy"]
        );
    }

    #[test]
    fn relative_imports_and_prose_are_not_modules() {
        let src = "from . import x\nx = 'import this'\n# from y import z\nimporter = 1\n";
        assert!(
            imported_modules(src).is_empty(),
            "{:?}",
            imported_modules(src)
        );
    }
}
