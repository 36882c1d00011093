//! Embeds the built web app (`web/dist`, made by `make web`) in the binary, so that the gateway
//! serves the UI with no Node.js at run time. Text assets are also gzipped here, once.
//! Without a built app the binary still builds; its `/` then says how to build the UI.

use std::io::Write;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("../web/dist");
    // A missing path would make cargo rerun this script (and rebuild the crate) on every build.
    std::fs::create_dir_all(&dist).expect("create web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());

    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let mut code = String::from("pub(crate) static ASSETS: &[Asset] = &[\n");
    for (i, (route, path)) in files.iter().enumerate() {
        let gz = if compressible(route) {
            let bytes = std::fs::read(path).expect("read asset");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&bytes).expect("gzip");
            let name = out.join(format!("asset-{i}.gz"));
            std::fs::write(&name, enc.finish().expect("gzip")).expect("write gz");
            format!("Some(include_bytes!({:?}))", name.display().to_string())
        } else {
            "None".into()
        };
        code += &format!(
            "    Asset {{ path: {route:?}, body: include_bytes!({:?}), gzip: {gz} }},\n",
            path.display().to_string()
        );
    }
    code += "];\n";
    std::fs::write(out.join("web_assets.rs"), code).expect("write web_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let route = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            files.push((route, path));
        }
    }
}

fn compressible(route: &str) -> bool {
    [".js", ".css", ".html", ".svg", ".json"]
        .iter()
        .any(|ext| route.ends_with(ext))
}
