"""Write sample_lists/numeric_phones.xlsx: phones stored as numeric cells (as Excel does when
someone types a number), one that lost its digits to scientific notation, on two sheets.

    python bench/make_sample_xlsx.py [OUTPUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from openpyxl import Workbook

ROWS: list[tuple[str, object, str]] = [
    ("Ava Stone", 2125550131, "gold"),  # numeric cell, US national digits
    ("Ben Stone", 12125550132, "silver"),  # numeric cell with the country code, no '+'
    ("Cleo Stone", 13125550133.0, "gold"),  # a float cell: must not come out as '...0.0'
    ("Dev Stone", "+1 415 555 0134", "bronze"),  # a text cell
    ("Eli Stone", "1.21256E+10", "gold"),  # digits lost to scientific notation: rejected
    ("Fay Stone", 4155550134, "gold"),  # duplicate of Dev, written as a number
    ("Gil Stone", 12345, "silver"),  # too short
]


def write(path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Contacts"
    sheet.append(["Name", "Phone", "Tier"])
    for row in ROWS:
        sheet.append(list(row))
    for cell in sheet["B"][1:]:
        if isinstance(cell.value, int | float):
            cell.number_format = "0"
    notes = book.create_sheet("Notes")
    notes.append(["This sheet has no phone column."])
    book.save(path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sample_lists/numeric_phones.xlsx")
    write(target)
    print(f"wrote {target}")
