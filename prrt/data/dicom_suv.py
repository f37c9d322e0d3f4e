"""The factor that turns a PET series' values into body-weight SUV (:func:`suv_factor`), for the DICOM import.

The vendor-neutral formula, by the series' ``Units``: GML is SUV already (factor 1); BQML gives SUV =
value × weight[g] / decayed dose[Bq], the dose decayed from the injection to the reference time
(``DecayCorrection`` START: the series time, or the earliest acquisition time when that is earlier; ADMIN:
the injection, no decay); CNTS only with the Philips SUV scale factor (7053,1000). Every tag the formula
needs is checked: a missing or implausible one (no weight, a weight in grams, a dose of 0 or in MBq, an
injection after the scan, a half-life that does not match the nuclide named, :data:`HALF_LIVES_S`, images
not corrected for attenuation or decay) is a :class:`prrt.data.DicomImportError` naming the tag.
"""

from __future__ import annotations

import datetime as _dt
import re

from .dicom_scan import DicomImportError

PHILIPS_SUV_SCALE = (0x7053, 0x1000)

#: Half-lives (s) of the nuclides of PET, to check RadionuclideHalfLife against the nuclide named in the header.
HALF_LIVES_S = {"F18": 6586.2, "GA68": 4062.6, "CU64": 45721.1, "ZR89": 282276.0, "C11": 1221.8, "N13": 597.9,
                "O15": 122.2, "RB82": 75.45, "LU177": 574300.0, "Y90": 230400.0, "I124": 360806.0}
ELEMENTS = {"FLUORINE": "F", "GALLIUM": "GA", "COPPER": "CU", "ZIRCONIUM": "ZR", "CARBON": "C", "NITROGEN": "N",
            "OXYGEN": "O", "RUBIDIUM": "RB", "LUTETIUM": "LU", "YTTRIUM": "Y", "IODINE": "I"}


# ---- SUV --------------------------------------------------------------------------------------------
def _datetime(date, time, where: str, tag: str) -> _dt.datetime:
    from pydicom.valuerep import DA, TM

    try:
        d, t = DA(str(date)), TM(str(time))
    except (ValueError, TypeError):
        d = t = None
    if d is None or t is None:
        raise DicomImportError(f"{where}: tag {tag}: cannot read the date/time {date!r} {time!r}")
    return _dt.datetime.combine(d, t)


def _nuclide(item) -> str | None:
    """The nuclide named in a RadiopharmaceuticalInformationSequence item (``GA68``), or None: from the
    radionuclide's code meaning (``^68^Gallium``) or the radiopharmaceutical's name (``Ga-68 DOTATOC``)."""
    texts = [str(code.get("CodeMeaning", "")) for code in item.get("RadionuclideCodeSequence", [])]
    texts.append(str(item.get("Radiopharmaceutical", "")))
    for text in texts:
        t = re.sub(r"[\^\-_/()]", " ", text.upper())
        t = re.sub(r"(\d)([A-Z])", r"\1 \2", re.sub(r"([A-Z])(\d)", r"\1 \2", t))
        tokens = t.split()
        masses = [x for x in tokens if x.isdigit()]
        symbols = [ELEMENTS.get(x, x) for x in tokens if x.isalpha()]
        for mass in masses:
            for symbol in symbols:
                if f"{symbol}{mass}" in HALF_LIVES_S:
                    return f"{symbol}{mass}"
    return None


def suv_factor(datasets, where: str) -> tuple[float, dict]:
    """The factor that turns this PET's values (after the rescale slope and intercept) into body-weight SUV,
    and what it was computed from.

    ``Units`` GML: already SUV (factor 1). BQML: SUV = value × weight[g] / decayed dose[Bq], the dose decayed
    from the injection to the reference time: the series time (``DecayCorrection`` START; the earliest acquisition
    time when that is earlier, as some scanners set the series time after the scan) or none (ADMIN: the images are
    decay-corrected to the injection). CNTS: only with the Philips SUV scale factor (7053,1000). Every tag is
    checked: a missing or implausible one (no weight, a weight in grams, a dose of 0 or in MBq, an injection after
    the scan, a half-life that does not match the nuclide, images not corrected for attenuation or decay) is a
    :class:`DicomImportError` naming the tag.
    """
    ds = datasets[0]
    units = str(ds.get("Units", "")).upper()
    info = {"units": units}
    if units == "GML":
        return 1.0, {**info, "note": "the PET is stored in SUV (Units GML)"}
    if units == "CNTS":
        private = ds.get(PHILIPS_SUV_SCALE)
        value = private.value if private is not None else None
        if isinstance(value, bytes):  # read without a private dictionary: the DS text
            value = value.decode(errors="ignore").strip("\x00 ")
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = None
        if value is None or not value > 0:
            raise DicomImportError(f"{where}: tag Units is CNTS (counts) and there is no SUV scale factor (tag "
                                   "7053,1000): counts cannot be converted to SUV; export the PET in Bq/mL")
        return value, {**info, "note": "Philips SUV scale factor (7053,1000)"}
    if units != "BQML":
        raise DicomImportError(f"{where}: tag Units is {units or 'missing'!r}; BQML (Bq/mL) or GML (SUV) is needed")
    corrected = [str(v).upper() for v in ds.get("CorrectedImage", [])]
    for flag, what in (("ATTN", "attenuation"), ("DECY", "decay")):
        if flag not in corrected:
            raise DicomImportError(f"{where}: tag CorrectedImage lacks {flag}: the PET is not corrected for {what}, so "
                                   "its values are not activity concentrations")
    decay = str(ds.get("DecayCorrection", "")).upper()
    if decay not in ("START", "ADMIN"):
        raise DicomImportError(f"{where}: tag DecayCorrection is {decay or 'missing'!r}; START or ADMIN is needed")
    weight = ds.get("PatientWeight")
    if weight in (None, "") or not float(weight) > 0:
        raise DicomImportError(f"{where}: tag PatientWeight is missing or 0: body-weight SUV needs the weight (kg)")
    weight = float(weight)
    if weight > 350:
        raise DicomImportError(f"{where}: tag PatientWeight is {weight:g}, which is not a weight in kg (in grams?)")
    if weight < 2:
        raise DicomImportError(f"{where}: tag PatientWeight is {weight:g} kg, which is implausible")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise DicomImportError(f"{where}: tag RadiopharmaceuticalInformationSequence is missing: no dose, half-life "
                               "or injection time")
    item = seq[0]
    dose = item.get("RadionuclideTotalDose")
    if dose in (None, "") or not float(dose) > 0:
        raise DicomImportError(f"{where}: tag RadionuclideTotalDose is missing or 0")
    dose = float(dose)
    if dose < 1e6:
        raise DicomImportError(f"{where}: tag RadionuclideTotalDose is {dose:g} Bq, less than 1 MBq: implausible for a "
                               "PET (a dose in MBq?)")
    half = item.get("RadionuclideHalfLife")
    if half in (None, "") or not float(half) > 0:
        raise DicomImportError(f"{where}: tag RadionuclideHalfLife is missing or 0")
    half = float(half)
    nuclide = _nuclide(item)
    if nuclide is not None and abs(half / HALF_LIVES_S[nuclide] - 1) > 0.02:
        raise DicomImportError(f"{where}: tag RadionuclideHalfLife is {half:g} s, but the nuclide named is {nuclide} "
                               f"(half-life {HALF_LIVES_S[nuclide]:g} s)")
    if "RadiopharmaceuticalStartDateTime" in item and str(item.RadiopharmaceuticalStartDateTime).strip():
        from pydicom.valuerep import DT

        try:
            injected = DT(str(item.RadiopharmaceuticalStartDateTime)).replace(tzinfo=None)
        except ValueError:
            raise DicomImportError(f"{where}: tag RadiopharmaceuticalStartDateTime cannot be read: "
                                   f"{item.RadiopharmaceuticalStartDateTime!r}") from None
    elif str(item.get("RadiopharmaceuticalStartTime", "")).strip():
        injected = _datetime(ds.get("SeriesDate", ""), item.RadiopharmaceuticalStartTime, where,
                             "SeriesDate + RadiopharmaceuticalStartTime")
    else:
        raise DicomImportError(f"{where}: tags RadiopharmaceuticalStartDateTime and RadiopharmaceuticalStartTime are "
                               "missing: no injection time")
    info.update(decay_correction=decay, weight_kg=weight, dose_bq=dose, half_life_s=half, nuclide=nuclide)
    if decay == "ADMIN":
        decayed, reference, minutes = dose, injected, 0.0
    else:
        reference = _datetime(ds.get("SeriesDate", ""), ds.get("SeriesTime", ""), where, "SeriesDate/SeriesTime")
        acquired = [_datetime(d.get("AcquisitionDate", "") or d.get("SeriesDate", ""), d.AcquisitionTime, where,
                              "AcquisitionDate/AcquisitionTime")
                    for d in datasets if str(d.get("AcquisitionTime", "")).strip()]
        if acquired and min(acquired) < reference:
            reference = min(acquired)
            info["note"] = "reference time: the earliest acquisition time (before the series time)"
        seconds = (reference - injected).total_seconds()
        if seconds < 0:
            raise DicomImportError(f"{where}: the injection (tag RadiopharmaceuticalStartDateTime/Time, {injected}) is "
                                   f"after the scan ({reference}): a wrong date or time")
        if seconds > 10 * half:
            raise DicomImportError(f"{where}: the scan is {seconds / 3600:.1f} h after the injection, more than ten "
                                   f"half-lives ({half:g} s): a wrong date, time or half-life")
        decayed = dose * 2.0 ** (-seconds / half)
        minutes = seconds / 60
    info["minutes_after_injection"] = round(minutes, 2)
    return weight * 1000.0 / decayed, info
