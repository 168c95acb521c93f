//! What every lapsd plot shares: the embedded font and writing a figure as PNG and SVG.
//!
//! Text is rendered by plotters' pure-Rust `ab_glyph` backend with the DejaVu Sans font embedded
//! here (assets/DejaVuSans.ttf, Bitstream Vera licence in assets/DejaVuSans-LICENSE.txt), so no
//! system fonts or fontconfig are needed; the font is committed once, for every crate that plots.
//! What a figure shows (axes, scales, series) stays with the crate that owns the data.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// The family name every figure asks for; it resolves to the embedded font.
pub const FONT_FAMILY: &str = "sans-serif";
static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER_FONT: Once = Once::new();

/// Why a figure could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output folder could not be created.
    #[error("plot {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// plotters failed to draw or write the file.
    #[error("plot {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
}

/// Registers the embedded font under [`FONT_FAMILY`] (once per process). If registration failed,
/// figures would lack text rather than fail, so it is logged, not returned.
pub fn register_font() {
    REGISTER_FONT.call_once(|| {
        if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_err() {
            tracing::error!(
                "embedded DejaVu Sans font could not be registered; plots will lack text"
            );
        }
    });
}

/// A figure that can be drawn on any plotters backend (PNG and SVG both).
pub trait Figure {
    /// Draws the whole figure on `root`; errors are plotters' messages.
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Writes `DIR/STEM.png` and `DIR/STEM.svg` of `size_px` (width, height); returns both paths.
pub fn save_png_and_svg<F: Figure>(
    figure: &F,
    dir: &Path,
    stem: &str,
    size_px: (u32, u32),
) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|source| PlotError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let draw_error = |path: &Path, reason: String| PlotError::Draw {
        path: path.to_path_buf(),
        reason,
    };
    let png = dir.join(format!("{stem}.png"));
    figure
        .draw(BitMapBackend::new(&png, size_px).into_drawing_area())
        .map_err(|reason| draw_error(&png, reason))?;
    let svg = dir.join(format!("{stem}.svg"));
    figure
        .draw(SVGBackend::new(&svg, size_px).into_drawing_area())
        .map_err(|reason| draw_error(&svg, reason))?;
    Ok(vec![png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Caption(&'static str);

    impl Figure for Caption {
        fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            root.titled(self.0, (FONT_FAMILY, 20))
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        }
    }

    #[test]
    fn a_figure_is_written_as_png_and_svg_with_its_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = save_png_and_svg(
            &Caption("hello plot"),
            &dir.path().join("sub"),
            "f",
            (200, 100),
        )
        .expect("written");
        assert_eq!(files.len(), 2);
        let png = std::fs::read(&files[0]).expect("png");
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).expect("svg");
        assert!(svg.contains("hello plot"));
    }

    #[test]
    fn an_unwritable_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("file");
        let err = save_png_and_svg(&Caption("x"), &file.join("sub"), "f", (10, 10))
            .expect_err("a file is in the way");
        assert!(matches!(err, PlotError::CreateDir { .. }));
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
