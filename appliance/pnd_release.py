"""Whether the installed pynetdicom is the release `pnd_tuning` was reviewed against, without
importing it: `burnstation run` checks this before it starts any process, and
`pnd_tuning.install()` again in the dicom process.

Each library function a patch of `pnd_tuning` replaces, copies or wraps is pinned by the sha256
of its source text (the lines `inspect.getsource` gives: decorators and indentation included),
read here from the library's files with `ast`, which is much cheaper than importing pynetdicom
and pydicom in the supervisor.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

# sha256 of the source of every library function the patches replace, copy or wrap: a pynetdicom
# release that changes one of them must be reviewed (checked at every start).
REPLACED_SOURCES = {
    "ACSE._negotiate_as_acceptor": "fffd360957c42a8ed89284cf1b1b734527c9be60253950777a0330c0f2be692e",
    "Association.__init__": "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea",
    "Association.kill": "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
    "Association._run_reactor": "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    "DULServiceProvider.run_reactor": "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "DULServiceProvider.kill_dul": "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    "DULServiceProvider.stop_dul": "28a7e0be126e7b306369cc1b131daec8e907d21d0f5692930133b6599b8c6e5f",
    "DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
    "AssociationSocket.recv": "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
    "DIMSEServiceProvider.send_msg": "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
    # not replaced: what the direct C-STORE path (pnd_tuning 3c) does instead of it, for the requestor
    "Association.send_c_store": "fa5a8127f349f8e75698f4cdf2b4dbe3f38e3e9e320a8cf45c15bf8333f9c283",
    # not replaced: what the direct C-MOVE path (pnd_tuning 3d) does instead of them, for the requestor
    "Association.send_c_move": "eb51b3130c213cf637e200e36101a484337e46cbc21b25f1733d7d2ccfdd0e71",
    "Association._wrap_get_move_responses": "d023a7bdadd24d59eb754f9d3d068b282311d32dcbb1f2a28b4cbe1bc76aafd9",
    # not replaced: its data-set part is what streaming a C-STORE data set to disk (3e) does instead
    "DIMSEMessage.decode_msg": "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
    # not replaced: what reading P-DATA PDUs (3e, 3f) and serving a C-STORE from the socket (3f) do instead of them
    "DULServiceProvider._read_pdu_data": "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "Association._serve_request": "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877",
    "StorageServiceClass.SCP": "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40",
}
# sha256 of the whole files of the reviewed release that hold those functions: while every one is
# unchanged, so is every function above, and `changed_sources` need not parse them with `ast` (about
# 65 ms of CPU in each of the three processes that check at every start: run, dicom, transfer)
REVIEWED_FILES = {
    "acse": "0e6095b7671fcae4d8a5dfb57876eb2fb24bc8f1ded7123339275193142dc787",
    "association": "401e38742f033d46e9e0a91bab05207b123e78971f484cccb666df4e16a23474",
    "dimse": "db3b4b92c852dc988450ca00639568852fca55f5940e7955dd259d04bbcc4836",
    "dimse_messages": "a65e021e35d5bb74b8bea262c7f7dcc6a2a8f4a00986173b9079075479bdcde1",
    "dul": "a7540d91f1a43286100527e4c4b58446d085534c804dceedfc9bcd35bcd92224",
    "service_class": "a325f72f8494a45bd5ce3017595f0163f2531b6d2d698a5ce74ab8828bafcd0f",
    "transport": "e0be938d0b23971b05c05acbe7a23f464779c22b0be384636c2bf8e5701c91a8",
}
# the functions' sha256 in those files (a copy: tests change REPLACED_SOURCES to fake a new release)
_REVIEWED_DIGESTS = dict(REPLACED_SOURCES)
# the library functions each patch stands on; BEHAVIOURAL is the one that changes what the station
# accepts (the others only make it faster and are left out when their library code changed)
BEHAVIOURAL = "called_aets"
PATCH_SOURCES = {
    BEHAVIOURAL: ("ACSE._negotiate_as_acceptor",),
    "reactors": ("Association.__init__", "Association.kill", "Association._run_reactor",
                 "DULServiceProvider.run_reactor", "DULServiceProvider.kill_dul", "DULServiceProvider.stop_dul"),
    "store_rsp": ("DIMSEServiceProvider.send_msg",),
    "store_rq": ("DIMSEServiceProvider.receive_primitive",),
    "recv": ("AssociationSocket.recv",),
    "store_send": ("Association.send_c_store", "DULServiceProvider.run_reactor"),
    "move_send": ("Association.send_c_move", "Association._wrap_get_move_responses", "DULServiceProvider.run_reactor"),
    "stream": ("DIMSEMessage.decode_msg", "DIMSEServiceProvider.receive_primitive", "DULServiceProvider._read_pdu_data"),
    "lean_store": ("DULServiceProvider._read_pdu_data", "DULServiceProvider.run_reactor",
                   "DIMSEServiceProvider.receive_primitive", "Association._serve_request", "StorageServiceClass.SCP",
                   "DIMSEServiceProvider.send_msg"),
}


class LibraryChanged(RuntimeError):
    """The installed pynetdicom differs where the called-AE-title patch stands: the station must not start."""


# the module of pynetdicom that defines each class named above
_MODULE_OF = {"ACSE": "acse", "Association": "association", "DULServiceProvider": "dul",
              "DIMSEServiceProvider": "dimse", "AssociationSocket": "transport", "DIMSEMessage": "dimse_messages",
              "StorageServiceClass": "service_class"}


def installed_version() -> str:
    try:
        return importlib.metadata.version("pynetdicom")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _library_folder() -> Path | None:
    spec = importlib.util.find_spec("pynetdicom")
    return Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None


def library_sources() -> dict[str, str | None]:
    """The source text of every function named in REPLACED_SOURCES, None when it is not found."""
    folder = _library_folder()
    parsed: dict[str, tuple[list[str], ast.Module] | None] = {}
    sources: dict[str, str | None] = {}
    for name in REPLACED_SOURCES:
        cls_name, func_name = name.split(".")
        module = _MODULE_OF[cls_name]
        if module not in parsed:
            try:
                text = (folder / f"{module}.py").read_text(encoding="utf-8") if folder else ""
                parsed[module] = (text.splitlines(keepends=True), ast.parse(text))
            except (OSError, SyntaxError, ValueError):
                parsed[module] = None
        sources[name] = _function_source(parsed[module], cls_name, func_name)
    return sources


def _function_source(parsed: tuple[list[str], ast.Module] | None, cls_name: str, func_name: str) -> str | None:
    if parsed is None:
        return None
    lines, tree = parsed
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == cls_name:
            for func in cls.body:
                if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) and func.name == func_name:
                    first = min([func.lineno] + [d.lineno for d in func.decorator_list])
                    return "".join(lines[first - 1:func.end_lineno])
    return None


def reviewed_files() -> bool:
    """Whether every library file in REVIEWED_FILES is byte for byte the reviewed one, and they hold
    every function of REPLACED_SOURCES (a function pinned in another file: parse, never assume)."""
    folder = _library_folder()
    if folder is None or not {_MODULE_OF[name.split(".")[0]] for name in REPLACED_SOURCES} <= set(REVIEWED_FILES):
        return False
    try:
        return all(hashlib.sha256((folder / f"{module}.py").read_bytes()).hexdigest() == digest
                   for module, digest in REVIEWED_FILES.items())
    except OSError:
        return False


def function_digests(parse: bool = False) -> dict[str, str]:
    """sha256 of the source of every function named in REPLACED_SOURCES ("missing" when not found):
    from the files with `ast`, or (unless `parse`) the reviewed ones when the files are the reviewed ones."""
    if not parse and reviewed_files():
        return dict(_REVIEWED_DIGESTS)
    return {name: hashlib.sha256(source.encode()).hexdigest() if source is not None else "missing"
            for name, source in library_sources().items()}


def changed_sources() -> dict[str, str]:
    """The library functions whose source is not the reviewed one: name -> its sha256 now."""
    return {name: digest for name, digest in function_digests().items() if digest != REPLACED_SOURCES[name]}


def check_library() -> dict[str, list[str]]:
    """The speed-only patches whose library code changed (to be left out) -> the changed functions.

    Raises LibraryChanged when the called-AE-title patch's code changed: the library's own
    negotiation would answer to other called AE titles than the station's.
    """
    changed = changed_sources()
    affected = {part: [n for n in names if n in changed] for part, names in PATCH_SOURCES.items()}
    affected = {part: names for part, names in affected.items() if names}
    if BEHAVIOURAL in affected:
        raise LibraryChanged(
            f"pynetdicom {installed_version()} is not the release the station was reviewed against "
            f"(pynetdicom==3.0.4): {', '.join(affected[BEHAVIOURAL])} changed, so the called-AE-title "
            "negotiation (<AET>, <AET>_E, _P, _TE, _TP) cannot be applied and the library's own would "
            "accept other titles. Install pynetdicom==3.0.4, or review appliance/dicom/pnd_tuning.py "
            "and re-pin its hashes in appliance/pnd_release.py.")
    return affected
