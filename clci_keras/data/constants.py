"""Constants of the ATLAS data path (grid, slicing, crop windows, scaling).

ATLAS R1.1, R1.2 (standard MNI release) and 2.0 are distributed on the MNI152
2009 1 mm grid of 197 x 233 x 189 voxels (x, y, z).  The original HDF5
generator (Andrewsher/ATLAS-dataset-generate-h5file) stores each volume as
189 axial slices of 233 x 197 (rows = y, columns = x); CLCI-Net (Yang et al.,
MICCAI 2019) then crops every slice to 224 x 176 and X-Net (Qi et al., MICCAI
2019) to 224 x 192.  The SPiN authors (Wong et al., 2021; repository
alexklwong/subpixel-embedding-segmentation) retrained CLCI-Net on R1.2 with
the window rows 5:229, columns 11:187 (``external_src/CLCI-Net/data.py``).
"""
import numpy as np

#: Volume shape (x, y, z) of ATLAS R1.1 / 2.0 images (MNI152 2009, 1 mm).
ATLAS_SHAPE = (197, 233, 189)

#: Affine of the ATLAS grid (nilearn's MNI152 2009 1 mm template): RAS, 1 mm, origin at voxel (98, 134, 72).
ATLAS_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -98.0], [0.0, 1.0, 0.0, -134.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)

#: Axial slices per subject in the HDF5 file.
SLICES_PER_SUBJECT = 189

#: Shape (rows, cols) = (y, x) of one stored slice.
SLICE_SHAPE = (233, 197)

#: Crop windows (row slice, column slice) applied to stored slices.
#: "clci": 224 x 176, the CLCI-Net input; "xnet": 224 x 192, the window of
#: X-Net's data generator (rows 5:229, cols 2:194); "spin": 224 x 176, the
#: window of the SPiN authors' CLCI-Net data generator and evaluation
#: (rows 5:229, cols 11:187; subpixel-embedding-segmentation,
#: external_src/CLCI-Net/data.py and run_val_prediction_CLCI.py).
CROPS = {
    "clci": (slice(5, 229), slice(10, 186)),
    "xnet": (slice(5, 229), slice(2, 194)),
    "spin": (slice(5, 229), slice(11, 187)),
}

#: Crop used when none is given.
DEFAULT_CROP = "clci"

#: Bytes per pixel of a slice held in memory by the readers: float32 image + uint8 label.
CACHED_PIXEL_BYTES = 5

#: The original generator divides R1.1 T1 intensities by this value.
R11_SCALE = 100.0

#: Percentile of the non-zero voxels that the "v2" intensity scheme maps to 1.
V2_PERCENTILE = 99.5

#: Name of the R1.1 metadata table at the root of the release.
R11_CSV_NAME = "ATLAS_Meta-Data_Release_1.1_standard_mni.csv"
#: Marker file the synthetic generator writes at the root of its release;
#: ``prepare_h5`` turns it into the HDF5 attribute ``synthetic = True``.
SYNTHETIC_MARKER = "clci_keras_synthetic.json"

#: BIDS space entity of ATLAS 2.0 images.
V2_SPACE = "MNI152NLin2009aSym"

#: Known layouts of a source tree.
LAYOUTS = ("r1.1", "r1.2", "v2")

#: How a source tree's layout may be given: one of :data:`LAYOUTS`, or ``"auto"`` (detected).
LAYOUT_CHOICES = ("auto", *LAYOUTS)

#: Intensity scheme used for each layout (R1.2: the SPiN authors' generator
#: divides by 100 as the R1.1 one, external_src/generate_h5/generate_h5.py).
LAYOUT_INTENSITY = {"r1.1": "r1.1", "r1.2": "r1.1", "v2": "v2"}

#: Format version of the HDF5 files written by :func:`prepare_h5`.
H5_FORMAT_VERSION = 1
