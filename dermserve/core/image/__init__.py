"""The one way through an image, in the order the classifier calls it: `opening` (untrusted bytes
to an opened image, its pixels still encoded: the size, format and header checks, DICOM dispatched
to `dicom`), then `decoding` (the opened image to upright RGB at reduced scale, within the pixel
budget); core/preprocessing.py then makes the model input. `limits` holds the bounds all of them
judge by; `jpeg_scan` and `dicom_scan` walk a file's structure in its bytes before a parser does.
Each module imports only those listed after it here: decoding, opening, dicom, dicom_scan,
jpeg_scan, limits."""
