"""Pure DICOM knowledge: values in, values out. No I/O beyond a given file object, no asyncio."""
