//! The rooms of `host/src` (its top-level modules) must not import each other in a circle: a
//! cycle is how `config`, `input` and `models` once ended up needing each other to change. This
//! reads the sources, so it fails on the commit that adds a cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn room_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let room = first.strip_suffix(".rs").unwrap_or(first);
    // The binary and the crate root sit above every room; tests may reach anywhere.
    (!matches!(room, "bin" | "lib" | "layout_tests")).then(|| room.to_string())
}

fn uses(line: &str, rooms: &BTreeSet<String>) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter_map(|(i, _)| {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rooms.contains(&name).then_some(name)
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn rooms_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let rooms: BTreeSet<String> = files
        .iter()
        .filter_map(|f| room_of(f.strip_prefix(&src).ok()?))
        .collect();
    assert!(
        rooms.contains("config") && rooms.contains("chain"),
        "{rooms:?}"
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(room) = room_of(file.strip_prefix(&src).unwrap()) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests inside a room may use anything; only the room's own code counts.
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or(&text);
        for line in code.lines() {
            for used in uses(line, &rooms) {
                if used != room {
                    edges.entry(room.clone()).or_default().insert(used);
                }
            }
        }
    }
    // Depth-first search with colours: reaching a room still on the path closes a cycle.
    fn visit(
        room: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|r| r == room) {
            let mut cycle = path[at..].to_vec();
            cycle.push(room.to_string());
            return Some(cycle);
        }
        if done.contains(room) {
            return None;
        }
        path.push(room.to_string());
        for next in edges.get(room).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(room.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for room in &rooms {
        if let Some(cycle) = visit(room, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "the rooms of host/src import each other in a circle: {}\n(all edges: {edges:?})",
                cycle.join(" -> ")
            );
        }
    }
}
