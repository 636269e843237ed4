"""Scans in: the data contract, the one read entry point, the format readers below it, and what the
network reads (groups, datasets); simulated scans.

    scan_files.py         read_scans: a file, a glob or several files as one scan (the entry point)
    scan.py               ScanData: the scan every reader returns (diffraction read lazily); canvas_shape
    contract.py           the contract's NPZ / HDF5 files: read_scan, read_object_guess, validate_scan
    validation.py         the data contract's checks: one error listing every problem
    photon_units.py       a file's amplitudes in photons (counts, or upstream's normalised convention)
    plausibility.py       magnitudes checked before compute (canvas size, overflowing energy)
    file_watch.py         size + mtime of lazily read files, checked before every read
    npz_files.py          .npz files opened with one clear line per failure; npz_memmap
    tike_files.py         tike's NPZ layout and whole-file-compressed .npz.bz2 / .gz / .xz archives
    beamline.py           beamline HDF5 (CXI, NeXus, any layout by dataset paths) read as a ScanData
    cxi_files.py          where each role lives in a CXI file
    nexus_files.py        where each role lives in a NeXus file (NX_class attributes)
    ptychodus_files.py    Ptychodus product files (product.h5): is_product, read_product (data.probe takes one)
    position_files.py     roles in another file: OTHER.h5::/path, a positions table, a Ptychodus product
    detector.py           detector frames as the model reads them (counts -> amplitudes, flips, crop/bin, mask)
    scan_writer.py        write_scan: NPZ or HDF5 by suffix, validated first, written atomically
    corpus.py             read_training_scans: files as one scan or as separate scans (ScanCorpus)
    grouping.py           gridsize neighbourhoods: make_groups (training), cover_groups (reconstruction)
    dataset.py            GroupDataset, PtychoDataModule; GroupRows / split_rows / read_groups (Ray Data's rows)
    simulate.py           synthetic scans
    corpus_simulation.py  `simulate --n-scans K`: corpora with other seeds, probes and doses
"""
