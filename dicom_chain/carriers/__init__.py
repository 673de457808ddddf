"""Carriers: where a block lives inside one kind of file. DICOM is the first; PNG, JPEG and TIFF
join as siblings, so nothing above this package branches on a file format."""
