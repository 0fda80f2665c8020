//! How rota's path keys map onto etcd's flat byte keys: a configured prefix (a namespace, like a
//! ZooKeeper chroot) in front of every path, ranges for a key's children and subtree, and the
//! session keys that live beside the paths where no path can reach them.

/// The key space of one [`crate::EtcdCoordination`].
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    prefix: String,
}

/// The byte that sorts right after `/`: `path + "0"` ends the range of `path` and `path/...`.
const AFTER_SLASH: char = '0';

impl KeySpace {
    /// Paths are stored under `prefix` (empty, or `/name[/name...]`).
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The etcd key of a path.
    pub(crate) fn key(&self, path: &str) -> Vec<u8> {
        format!("{}{path}", self.prefix).into_bytes()
    }

    /// The path of an etcd key, if it is one of ours.
    pub(crate) fn path(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let path = key.strip_prefix(self.prefix.as_str())?;
        path.starts_with('/').then(|| path.to_owned())
    }

    /// The range `[start, end)` of every key strictly below `path`.
    pub(crate) fn children_range(&self, path: &str) -> (Vec<u8>, Vec<u8>) {
        (
            format!("{}{path}/", self.prefix).into_bytes(),
            format!("{}{path}{AFTER_SLASH}", self.prefix).into_bytes(),
        )
    }

    /// The range `[start, end)` holding `path` and every key below it. It also holds siblings
    /// whose name extends `path` with a byte below `/` (`path-x`): watchers filter those out
    /// with [`in_scope`].
    pub(crate) fn subtree_range(&self, path: &str) -> (Vec<u8>, Vec<u8>) {
        (
            self.key(path),
            format!("{}{path}{AFTER_SLASH}", self.prefix).into_bytes(),
        )
    }

    /// The key that exists exactly as long as lease `lease` does: every write of the session
    /// is conditional on it. Paths start with `/`, so `!session/...` is out of their reach.
    pub(crate) fn session_key(&self, lease: i64) -> Vec<u8> {
        format!("{}!session/{lease:016x}", self.prefix).into_bytes()
    }
}

/// Whether `path` is covered by a watch on `watched`.
pub(crate) fn in_scope(watched: &str, recursive: bool, path: &str) -> bool {
    path == watched
        || (recursive
            && path
                .strip_prefix(watched)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// The name of the next path segment below `parent` of a key below it.
pub(crate) fn child_name<'a>(parent: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(parent)?.strip_prefix('/')?;
    rest.split('/').next().filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_under_the_prefix() {
        let keys = KeySpace::new("/tenant/");
        assert_eq!(keys.key("/rota/c"), b"/tenant/rota/c".to_vec());
        assert_eq!(keys.path(b"/tenant/rota/c").as_deref(), Some("/rota/c"));
        assert_eq!(keys.path(b"/other/rota/c"), None);
        assert_eq!(
            keys.path(&keys.session_key(7)),
            None,
            "session keys are not paths"
        );
        let bare = KeySpace::new("");
        assert_eq!(bare.path(b"/a").as_deref(), Some("/a"));
    }

    #[test]
    fn ranges_cover_the_subtree_and_nothing_after_it() {
        let keys = KeySpace::new("");
        let (start, end) = keys.children_range("/a");
        for inside in ["/a/b", "/a/b/c", "/a/\u{10ffff}"] {
            let k = inside.as_bytes();
            assert!(start.as_slice() <= k && k < end.as_slice(), "{inside}");
        }
        for outside in ["/a", "/a0", "/ab", "/a-b"] {
            let k = outside.as_bytes();
            assert!(!(start.as_slice() <= k && k < end.as_slice()), "{outside}");
        }
        let (start, end) = keys.subtree_range("/a");
        assert!(start.as_slice() <= b"/a".as_slice() && b"/a/x".as_slice() < end.as_slice());
        assert!(b"/ab".as_slice() >= end.as_slice());
    }

    #[test]
    fn scope_and_children() {
        assert!(in_scope("/a", false, "/a"));
        assert!(!in_scope("/a", false, "/a/b"));
        assert!(in_scope("/a", true, "/a/b"));
        assert!(!in_scope("/a", true, "/a-b"));
        assert_eq!(child_name("/a", "/a/b/c"), Some("b"));
        assert_eq!(child_name("/a", "/a/b"), Some("b"));
        assert_eq!(child_name("/a", "/ab"), None);
    }
}
