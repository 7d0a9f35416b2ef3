//! Opening a program object: interfaces, the pinning loader, taking maps and programs out of it,
//! maps pinned by another process, pin files.

use std::ffi::CString;
use std::path::Path;

use aya::maps::{MapData, MapError, MapInfo};
use aya::{Ebpf, EbpfLoader};
use portcullis_common::MAP_CONFIG;

use crate::error::{map_err, Error, Result};

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::UnknownInterface(name.to_owned()))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface(name.to_owned()));
    }
    Ok(index)
}

/// Loads object `bytes` ("XDP", "node-hook": `object`) with each of `maps` pinned under `pin_dir`
/// (created if needed), reusing what is pinned there; true when a pinned set exists already (its
/// `CONFIG` is there). A pinned map whose key size, value size or capacity differs from the
/// object's own (another version made it) is refused before anything loads, with what to do:
/// adopting it would fail in the verifier, or worse.
pub fn load_pinned(
    pin_dir: Option<&Path>,
    maps: &[&str],
    (object, bytes): (&'static str, &[u8]),
) -> Result<(Ebpf, bool)> {
    let mut loader = EbpfLoader::new();
    let mut adopting = false;
    if let Some(dir) = pin_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        adopting = dir.join(MAP_CONFIG).exists();
        check_pins(dir, maps, object, bytes)?;
        for name in maps {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok((loader.load(bytes)?, adopting))
}

/// Every map of `maps` pinned under `dir` has the object's key size, value size and capacity.
fn check_pins(dir: &Path, maps: &[&str], object: &'static str, bytes: &[u8]) -> Result<()> {
    let parsed = aya_obj::Object::parse(bytes).map_err(|e| Error::Object {
        object,
        message: e.to_string(),
    })?;
    for name in maps {
        let path = dir.join(name);
        let (Some(def), true) = (parsed.maps.get(*name), path.exists()) else {
            continue;
        };
        let info = MapInfo::from_pin(&path).map_err(map_err_owned(name))?;
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        let expected = (def.key_size(), def.value_size(), def.max_entries());
        if pinned != expected {
            return Err(Error::IncompatiblePin {
                name: name.to_string(),
                dir: dir.to_owned(),
                pinned,
                expected,
            });
        }
    }
    Ok(())
}

/// `map_err` for a map named at run time (the names here come from the callers' lists).
fn map_err_owned(name: &str) -> impl FnOnce(MapError) -> Error + '_ {
    move |e| Error::Object {
        object: "pinned map",
        message: format!("{name}: {e}"),
    }
}

/// Takes map `name` out of the loaded `object` ("XDP", "node-hook": for the error message).
pub fn take<T>(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(Error::MissingMap { name, object })?;
    T::try_from(map).map_err(map_err(name))
}

/// Program `name` of the loaded `object`, as program type `P`.
pub fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram { name, object })?;
    Ok(program.try_into()?)
}

/// Opens map `name` pinned under `dir` by another process.
pub fn open_pinned<T>(dir: &Path, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Removes a pin file; one already gone is fine.
pub fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}
