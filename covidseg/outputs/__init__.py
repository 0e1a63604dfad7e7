"""What covidseg writes, written safely: folders checked before work starts and file-system faults said in
one line (folders.py), files written whole or not at all and CSV cells a spreadsheet shows as text
(files.py)."""

from covidseg.outputs.files import (
    RUN_DIR_FIX,
    folder_error,
    other_folder,
    output_folder,
    plain_cell,
    read_csv,
    safe_cell,
    write_csv,
    write_files,
)
from covidseg.outputs.folders import (
    fault,
    fault_message,
    file_system_error,
    folder_faults,
    writable_folder,
)

__all__ = [
    "RUN_DIR_FIX",
    "fault",
    "fault_message",
    "file_system_error",
    "folder_error",
    "folder_faults",
    "other_folder",
    "output_folder",
    "plain_cell",
    "read_csv",
    "safe_cell",
    "writable_folder",
    "write_csv",
    "write_files",
]
