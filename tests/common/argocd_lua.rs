//! Argo CD's Lua customizations (health checks, resource actions) run the way Argo CD runs them,
//! by a real Lua 5.1 (mlua; Argo CD's gopher-lua implements 5.1).

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Runs `script` (named `name` in errors) on `obj` as Argo CD does: the object as the global
/// `obj` (JSON null as nil, as Argo CD's conversion does), only the base, table, string and math
/// libraries (so a script that needs `os` or `io` fails here), and the chunk's return value,
/// deserialized into `T`, as the result. Panics with the script's error.
#[track_caller]
pub fn run<T: DeserializeOwned>(name: &str, script: &str, obj: &Value) -> T {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::new(),
    )
    .expect("a Lua 5.1 state");
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("obj as a Lua table");
    lua.globals().set("obj", value).unwrap();
    let result: mlua::Value = lua
        .load(script)
        .set_name(name)
        .eval()
        .unwrap_or_else(|e| panic!("{name} failed on {obj}: {e}"));
    lua.from_value(result)
        .unwrap_or_else(|e| panic!("{name} returned an unexpected value on {obj}: {e}"))
}
