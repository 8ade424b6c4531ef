//! A real browser for the search page's test: Debian's `chromium` and `chromium-driver`, driven
//! by `selenium` (pinned, installed by `scripts/setup --test` into a folder under `target/`).
//! The driver's path is always given, so Selenium Manager never downloads anything.

use std::path::PathBuf;
use std::process::Command;

use crate::repo_root;

/// The selenium release the test runs with; `scripts/setup --test` installs it.
pub const SELENIUM_VERSION: &str = "4.51.0";

/// What the browser test needs.
#[derive(Debug, Clone)]
pub struct Browser {
    /// The Chromium binary.
    pub chromium: PathBuf,
    /// Its WebDriver (the same version).
    pub driver: PathBuf,
    /// The folder selenium is installed in (for `PYTHONPATH`).
    pub selenium: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !found.is_empty()).then(|| PathBuf::from(found))
}

/// The browser, its driver and selenium, or what to run to get them.
pub fn browser() -> Result<Browser, String> {
    let setup = "run `scripts/setup --test` (it installs chromium and chromium-driver from \
                 Debian and selenium from PyPI)";
    let chromium =
        on_path("chromium").ok_or_else(|| format!("chromium is not installed: {setup}"))?;
    let driver =
        on_path("chromedriver").ok_or_else(|| format!("chromedriver is not installed: {setup}"))?;
    let selenium = repo_root().join(format!("target/python/selenium-{SELENIUM_VERSION}"));
    if !selenium.join(".installed").is_file() {
        return Err(format!(
            "selenium {SELENIUM_VERSION} is not installed in {}: {setup}",
            selenium.display()
        ));
    }
    Ok(Browser {
        chromium,
        driver,
        selenium,
    })
}

/// Where a browser test writes its screenshots: `target/test-output/<name>`, emptied first.
pub fn output_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-output").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test output folder");
    dir
}
